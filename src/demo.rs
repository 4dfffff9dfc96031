//! `odata-delta-gateway demo`: a bundled sample OData service (which changes by itself) with the
//! gateway in front of it, and curl commands that show a tracked read and a delta.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use odata_delta_gateway::Shared;
use odata_delta_gateway::config::{Config, DemoFlags, Flags};
use odata_sample_service::catalog;

/// Run the demo until `shutdown` is cancelled. Without `--data-dir` the store lives in a
/// temporary directory, removed when the demo stops, so that trying it leaves nothing behind.
pub(crate) async fn run(mut flags: DemoFlags, shutdown: CancellationToken) -> Result<(), String> {
    let (data_dir, temporary) = match flags.data_dir.take() {
        Some(dir) => (dir, false),
        None => (
            std::env::temp_dir().join(format!("odata-delta-gateway-demo-{}", std::process::id())),
            true,
        ),
    };
    let result = serve(flags, data_dir.clone(), temporary, shutdown).await;
    if temporary
        && let Err(e) = std::fs::remove_dir_all(&data_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!(
            "warning: cannot remove the demo's store {}: {e}",
            data_dir.display()
        );
    }
    result
}

/// The demo proper: the sample service and the gateway, until `shutdown`.
async fn serve(
    flags: DemoFlags,
    data_dir: std::path::PathBuf,
    temporary: bool,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let upstream = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen for the sample service: {e}"))?;
    let upstream_addr = upstream.local_addr().map_err(|e| e.to_string())?;
    let options = catalog::Options {
        change_interval: Duration::from_secs(flags.change_every_secs),
        report: Some(|summary| tracing::info!("sample upstream: {summary}")),
        ..catalog::Options::default()
    };
    let sample_task = tokio::spawn(catalog::serve(upstream, options, shutdown.clone()));

    let gateway_flags = Flags {
        upstream: Some(format!("http://{upstream_addr}{}", catalog::ROOT)),
        listen: Some(flags.listen),
        data_dir: Some(data_dir.clone()),
        ..Flags::default()
    };
    let config = Config::from_parts(&gateway_flags, None).map_err(|e| e.to_string())?;
    let shared = Shared::new(config).map_err(|e| e.to_string())?;
    let running = odata_delta_gateway::start(Arc::new(shared), shutdown.clone())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", flags.listen))?;
    let base = format!("http://{}{}", running.addr, catalog::ROOT);
    println!(
        r#"
odata-delta-gateway demo
  sample upstream: http://{upstream_addr}{path}   (changes every {every}s: inserts, updates, deletes)
  gateway:         {base}
  store:           {dir}{removed}

1. A tracked read (all products, and a delta link at the end):
   curl -s -H 'Prefer: odata.track-changes, odata.maxpagesize=5' '{base}/Products' | head -c 1500; echo

2. Take the delta link from the last page and follow it a few seconds later — only what changed:
   DELTA=$(curl -s -H 'Prefer: odata.track-changes' '{base}/Products' | sed -n 's/.*"@odata.deltaLink":"\([^"]*\)".*/\1/p')
   sleep {every}; curl -s "$DELTA"; echo

3. The same delta in the OData 4.01 shape (@removed tombstones), and its size:
   curl -s -H 'OData-MaxVersion: 4.01' "$DELTA"; echo
   curl -s "$(echo "$DELTA" | sed 's#/Products?#/Products/$count?#')"; echo

4. Everything else passes through, e.g. a single product or the metadata:
   curl -s '{base}/Products(1)'; echo
   curl -s '{base}/$metadata' | head -c 1500; echo

Ctrl-C stops both.
"#,
        path = catalog::ROOT,
        every = flags.change_every_secs,
        dir = data_dir.display(),
        removed = if temporary {
            "   (removed when the demo stops)"
        } else {
            ""
        },
    );
    running.wait().await;
    match sample_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("sample service: {e}")),
        Err(e) => Err(format!("sample service: {e}")),
    }
}
