//! `odata-delta-gateway feeds list|show|drop|compact --data-dir DIR`: the real binary on a data dir
//! that a real gateway wrote, and its polite refusal while a gateway runs on that dir.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::json;
use support::gateway::{Client, GatewayProcess, data_dir, gateway_command};
use support::shop::{ROOT, shop};

fn feeds(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["feeds"];
    all.extend_from_slice(args);
    all.extend(["--data-dir", dir.to_str().unwrap()]);
    gateway_command(&all, &[])
        .output()
        .expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The feed lines of `feeds list` (without the header), as columns.
fn rows(list: &str) -> Vec<Vec<String>> {
    list.lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn feeds_commands_list_show_drop_and_compact_a_stopped_gateways_store() {
    let up = shop(40).await;
    let (_dir, dir) = data_dir();
    let gw = GatewayProcess::spawn(&up.base_url(), &dir, &[]);
    let client = Client::default();
    let track = [("Prefer", "odata.track-changes")];
    let (_, all_link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &track)
        .await;
    let (_, paris_link) = client
        .read_all(
            &gw.url(&format!("{ROOT}/Customers?$filter=city%20eq%20%27Paris%27")),
            &track,
        )
        .await;

    // While the gateway holds the store, every command refuses and says what to do.
    for args in [&["list"][..], &["compact"], &["drop", "abcdef"]] {
        let out = feeds(&dir, args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "a gateway is running on this data dir; stop it or use the admin listener"
            ),
            "{args:?}: {stderr}"
        );
    }
    gw.kill9();

    let list = stdout(&feeds(&dir, &["list"]));
    assert!(
        list.starts_with("id\troute\tentity_set\tscope\tentities\tversion"),
        "{list}"
    );
    let found = rows(&list);
    assert_eq!(found.len(), 2, "{list}");
    let all = found
        .iter()
        .find(|r| r[4] == "40")
        .expect("the unfiltered feed with 40 entities");
    let paris = found
        .iter()
        .find(|r| r[4] != "40")
        .expect("the filtered feed");
    assert_eq!(all[2], "Customers");
    assert_eq!(all[1], ROOT);
    // A short hash of the scope, the same for both feeds of one (anonymous) caller.
    assert_eq!(all[3].len(), 12);
    assert_eq!(all[3], paris[3]);
    assert_eq!(all[7], "stored");
    assert_eq!(all[0].len(), 32);

    let show = stdout(&feeds(&dir, &["show", &paris[0][..8]]));
    assert!(show.contains("entity set: Customers"), "{show}");
    assert!(show.contains("$filter"), "{show}");
    assert!(
        show.contains(&format!("entities:   {}", paris[4])),
        "{show}"
    );
    // A prefix that is too short, or matches nothing, is refused with the reason.
    let out = feeds(&dir, &["show", "ab"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 6"));
    let out = feeds(&dir, &["show", "000000000000"]);
    assert!(!out.status.success());

    let dropped = stdout(&feeds(&dir, &["drop", &all[0]]));
    assert!(dropped.contains("dropped feed"), "{dropped}");
    let list = stdout(&feeds(&dir, &["list"]));
    let after = rows(&list);
    let all_after = after.iter().find(|r| r[0] == all[0]).unwrap();
    assert_eq!(all_after[7], "dropped");
    assert_eq!(all_after[4], "0");

    let compacted = stdout(&feeds(&dir, &["compact"]));
    assert!(compacted.contains("bytes"), "{compacted}");

    // The gateway starts on the tool's work: the dropped feed's link starts over (C25), the
    // other one still answers.
    up.update("Customers", json!(1), json!({"name": "renamed"}));
    let gw = GatewayProcess::spawn(&up.base_url(), &dir, &[]);
    // The restarted gateway listens on another port.
    let relink = |link: &str| {
        let old = link["http://".len()..].split('/').next().unwrap();
        link.replacen(old, &gw.addr.to_string(), 1)
    };
    let r = client.get(&relink(&all_link), &[]).await;
    assert_eq!(r.status, 410, "{}", r.text());
    let r = client.get(&relink(&paris_link), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let changed = r.json()["value"].as_array().unwrap().len();
    assert_eq!(changed, 1, "customer 1 is in Paris: {}", r.text());
}
