//! Black-box tests of per-route upstream TLS (`[route.tls]`): the fake upstream behind a local TLS
//! front on 127.0.0.1 with certificates generated here — a CA, a server certificate signed by it,
//! an expired one, one for another host name, an unrelated CA, and a client CA with its client
//! certificates. A TLS failure is a 502 OData error naming the cause (C26); bad files stop the
//! start with file, line and what is expected.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use odata_delta_gateway::config::{Config, ConfigError, Flags};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use support::FakeUpstream;
use support::gateway::{Client, Gateway, GatewayProcess, Resp};
use support::shop::{ROOT, shop};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

fn track() -> [(&'static str, &'static str); 1] {
    [("Prefer", "odata.track-changes")]
}

// ------------------------------------------------------------------ certificates

/// A CA that signs certificates.
struct Ca {
    /// Its certificate, PEM.
    pem: String,
    /// Its certificate, DER.
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names`, for a TLS server or a client.
    fn leaf(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            pem: cert.pem(),
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth, false)
    }
}

/// A certificate and its private key.
struct Leaf {
    pem: String,
    der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }
}

/// Every certificate a test needs, written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    other_ca: Ca,
    client_ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new("Test Corporate CA"),
            other_ca: Ca::new("Unrelated CA"),
            client_ca: Ca::new("Test Client CA"),
        };
        pki.write("ca.pem", &pki.ca.pem);
        pki.write("other-ca.pem", &pki.other_ca.pem);
        pki
    }

    /// Write a file into the directory; its absolute path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn server_config(leaf: &Leaf, client_roots: Option<&Ca>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(vec![leaf.der.clone()], leaf.key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

// ------------------------------------------------------------------ the TLS upstream

/// The fake upstream behind a TLS front on 127.0.0.1: each connection's handshake is done here
/// and its bytes are relayed to the fake, whose links are relative, so they hold on https.
struct TlsUpstream {
    fake: FakeUpstream,
    addr: SocketAddr,
    /// Handshakes that completed.
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsUpstream {
    async fn start(fake: FakeUpstream, config: rustls::ServerConfig) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = fake.addr();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                connections.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsUpstream {
            fake,
            addr,
            handshakes,
            task,
        }
    }

    /// `https://127.0.0.1:PORT/odata/v4/shop`.
    fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}{ROOT}", self.addr.port())
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config with one route at the default prefix for `upstream` and `tls` as its `[route.tls]`.
fn one_route(upstream: &str, tls: &str) -> String {
    format!("[[route]]\nupstream = \"{upstream}\"\n[route.tls]\n{tls}\n")
}

async fn gateway(toml: &str) -> Gateway {
    Gateway::start_with("", Some(toml), |_| {}).await
}

/// The binary's arguments for config `file`: listening on 127.0.0.1:0, its store in `data` beside
/// the file.
fn config_args(file: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--config".into(),
        file.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        file.with_file_name("data").into(),
    ]
}

/// A tracked read of Customers through a gateway whose route trusts `pki`'s CA, from an upstream
/// presenting `leaf`.
async fn tracked_read_trusting_the_ca(pki: &Pki, leaf: &Leaf) -> Resp {
    let up = TlsUpstream::start(shop(3).await, server_config(leaf, None)).await;
    let toml = one_route(
        &up.base_url(),
        &format!("ca_file = \"{}\"", pki.path("ca.pem")),
    );
    let gw = gateway(&toml).await;
    Client::default()
        .get(&gw.url(&format!("{ROOT}/Customers")), &track())
        .await
}

/// A 502 OData error with code `UpstreamTlsError` whose message says `cause`.
fn assert_tls_failure(r: &Resp, cause: &str) {
    assert_eq!(r.status, 502, "{}", r.text());
    let body: Value = r.json();
    assert_eq!(body["error"]["code"], "UpstreamTlsError", "C26: {body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(cause),
        "message should say {cause:?}: {body}"
    );
}

// ------------------------------------------------------------------ trust

#[tokio::test]
async fn a_route_trusting_its_ca_file_reads_tracked_and_polls_deltas_over_tls() {
    let pki = Pki::new();
    let leaf = pki.ca.server(&["127.0.0.1", "localhost"]);
    let up = TlsUpstream::start(shop(25).await, server_config(&leaf, None)).await;
    let toml = one_route(
        &up.base_url(),
        &format!("ca_file = \"{}\"", pki.path("ca.pem")),
    );
    let gw = gateway(&toml).await;
    let client = Client::default();
    let (entities, link) = client
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &track())
        .await;
    assert_eq!(entities.len(), 25);
    up.fake
        .update("Customers", json!(4), json!({"name": "Renamed"}));
    let r = client.get(&link, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let value = r.json()["value"].as_array().unwrap().clone();
    assert_eq!(value.len(), 1, "{value:?}");
    assert_eq!(value[0]["ID"], 4);
    assert_eq!(value[0]["name"], "Renamed");
    // Pass-through goes over the same route client.
    let r = client
        .get(&gw.url(&format!("{ROOT}/Customers(4)")), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "Renamed");
    assert!(up.handshakes.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn an_upstream_signed_by_an_unrelated_ca_is_a_502_naming_an_unknown_issuer_and_is_logged() {
    let pki = Pki::new();
    let leaf = pki.ca.server(&["127.0.0.1"]);
    let up = TlsUpstream::start(shop(3).await, server_config(&leaf, None)).await;
    // One route trusts another CA only, one has no TLS settings (the bundled web PKI roots).
    let config = format!(
        "[[route]]\nprefix = \"/other\"\nupstream = \"{0}\"\n[route.tls]\nca_file = \"{1}\"\n\n[[route]]\nprefix = \"/web\"\nupstream = \"{0}\"\n",
        up.base_url(),
        pki.path("other-ca.pem")
    );
    let file = pki.write("gateway.toml", &config);
    let gw = GatewayProcess::spawn_with(&config_args(&file), &[]);
    let client = Client::default();
    for prefix in ["/other", "/web"] {
        let tracked = client
            .get(&gw.url(&format!("{prefix}/Customers")), &track())
            .await;
        assert_tls_failure(
            &tracked,
            "upstream certificate is not trusted (unknown issuer)",
        );
        let passed = client
            .get(&gw.url(&format!("{prefix}/Customers(1)")), &[])
            .await;
        assert_tls_failure(&passed, "unknown issuer");
    }
    assert_eq!(up.fake.collection_requests("Customers"), 0);
    let upstream = format!("127.0.0.1:{}", up.addr.port());
    let logged = gw.wait_for_stderr(Duration::from_secs(5), |l| {
        l.contains("TLS with the upstream failed")
            && l.contains(&upstream)
            && l.contains("unknown issuer")
    });
    assert!(
        logged.is_some(),
        "stderr:\n{}",
        gw.stderr_lines().join("\n")
    );
}

#[tokio::test]
async fn an_expired_upstream_certificate_is_a_502_naming_expiry() {
    let pki = Pki::new();
    let leaf = pki
        .ca
        .leaf(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, true);
    let r = tracked_read_trusting_the_ca(&pki, &leaf).await;
    assert_tls_failure(&r, "upstream certificate expired");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_a_502_naming_the_host_name() {
    let pki = Pki::new();
    let leaf = pki.ca.server(&["erp.example.com"]);
    let r = tracked_read_trusting_the_ca(&pki, &leaf).await;
    assert_tls_failure(&r, "not valid for the upstream's host name");
}

#[tokio::test]
async fn system_roots_trust_the_operating_systems_store() {
    // The store is what SSL_CERT_FILE names, as OpenSSL reads it: here the test's CA alone.
    let pki = Pki::new();
    let leaf = pki.ca.server(&["127.0.0.1"]);
    let up = TlsUpstream::start(shop(5).await, server_config(&leaf, None)).await;
    let file = pki.write(
        "gateway.toml",
        &one_route(&up.base_url(), "system_roots = true"),
    );
    let ca = pki.dir.path().join("ca.pem");
    let gw = GatewayProcess::spawn_with(&config_args(&file), &[("SSL_CERT_FILE", ca.as_os_str())]);
    let (entities, _) = Client::default()
        .read_all(&gw.url(&format!("{ROOT}/Customers")), &track())
        .await;
    assert_eq!(entities.len(), 5);
}

// ------------------------------------------------------------------ client certificates

#[tokio::test]
async fn routes_on_one_origin_present_their_own_client_certificate_or_none_and_never_share_connections()
 {
    let pki = Pki::new();
    let leaf = pki.ca.server(&["127.0.0.1"]);
    let good = pki.client_ca.client("gateway");
    pki.write("client.pem", &good.pem);
    pki.write("client.key", &good.key_pem);
    let stranger = pki.other_ca.client("gateway");
    pki.write("stranger.pem", &stranger.pem);
    pki.write("stranger.key", &stranger.key_pem);
    let up = TlsUpstream::start(shop(4).await, server_config(&leaf, Some(&pki.client_ca))).await;
    // Three routes on the same upstream origin and service root: with the right client
    // certificate, with none, and with one the upstream's client CA did not issue.
    let route = |prefix: &str, extra: &str| {
        format!(
            "[[route]]\nprefix = \"{prefix}\"\nupstream = \"{}\"\n[route.tls]\nca_file = \"{}\"\n{extra}\n",
            up.base_url(),
            pki.path("ca.pem")
        )
    };
    let toml = [
        route(
            "/mtls",
            &format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
                pki.path("client.pem"),
                pki.path("client.key")
            ),
        ),
        route("/nocert", ""),
        route(
            "/stranger",
            &format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
                pki.path("stranger.pem"),
                pki.path("stranger.key")
            ),
        ),
    ]
    .concat();
    let gw = gateway(&toml).await;
    let client = Client::default();
    let (entities, _) = client.read_all(&gw.url("/mtls/Customers"), &track()).await;
    assert_eq!(entities.len(), 4);
    let before = up.handshakes.load(Ordering::SeqCst);
    // The /mtls route's connection is pooled now; the others must not get it.
    let r = client.get(&gw.url("/nocert/Customers"), &track()).await;
    assert_tls_failure(&r, "the upstream requires a client certificate");
    let r = client.get(&gw.url("/nocert/Customers(1)"), &[]).await;
    assert_tls_failure(&r, "client certificate");
    let r = client.get(&gw.url("/stranger/Customers"), &track()).await;
    assert_tls_failure(&r, "the upstream refused the gateway's client certificate");
    // The authenticated route goes on working, on its own connections.
    let r = client.get(&gw.url("/mtls/Customers(2)"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.handshakes.load(Ordering::SeqCst),
        before,
        "no handshake of the refused routes completes, and /mtls reuses its connection"
    );
}

// ------------------------------------------------------------------ bad files at start

/// Load `text` as `dir/gateway.toml` through the config loader; the error it stops with.
fn refused(dir: &Path, text: &str) -> ConfigError {
    let file = dir.join("gateway.toml");
    match Config::from_parts(&Flags::default(), Some((&file, text))) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// The 1-based line where `needle` first occurs in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle in text")]
        .matches('\n')
        .count()
        + 1
}

#[test]
fn bad_tls_files_stop_the_start_with_file_line_and_what_is_expected() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let good = pki.client_ca.client("gateway");
    pki.write("client.pem", &good.pem);
    pki.write("client.key", &good.key_pem);
    let other = pki.client_ca.client("other");
    pki.write("other.key", &other.key_pem);
    pki.write("garbage.pem", "this is not PEM at all\n");
    pki.write("key-only.pem", &good.key_pem);
    pki.write("broken.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    let https = "https://erp.example.com/sap/opu/odata4/svc";
    // (the [route.tls] lines, the text on the line the error names, what the message says)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "ca_file = \"missing.pem\"",
            "missing.pem",
            &[
                "cannot read",
                "missing.pem",
                "expected a PEM file of CA certificates",
            ],
        ),
        (
            "ca_file = \"garbage.pem\"",
            "garbage.pem",
            &["holds no certificate", "BEGIN CERTIFICATE"],
        ),
        (
            "ca_file = \"key-only.pem\"",
            "key-only.pem",
            &["holds no certificate", "expected the CA certificates"],
        ),
        (
            "ca_file = \"broken.pem\"",
            "broken.pem",
            &["not a valid PEM file", "expected"],
        ),
        (
            "client_cert_file = \"client.pem\"",
            "client_cert_file",
            &["client_cert_file needs client_key_file", "private key"],
        ),
        (
            "client_key_file = \"client.key\"",
            "client_key_file",
            &["client_key_file needs client_cert_file"],
        ),
        (
            "client_cert_file = \"client.pem\"\nclient_key_file = \"other.key\"",
            "other.key",
            &["does not belong to the certificate", "expected the key"],
        ),
        (
            "client_cert_file = \"client.pem\"\nclient_key_file = \"client.pem\"",
            "client_key_file",
            &[
                "holds no private key",
                "expected an unencrypted PEM private key",
            ],
        ),
        (
            "client_cert_file = \"client.key\"\nclient_key_file = \"client.key\"",
            "client_cert_file",
            &["holds no certificate", "expected the client certificate"],
        ),
        (
            "client_cert_file = \"client.pem\"\nclient_key_file = \"gone.key\"",
            "gone.key",
            &["cannot read", "expected a PEM file with the private key"],
        ),
        // No switch turns verification off: an unknown key, with the ones there are.
        (
            "danger_accept_invalid_certs = true",
            "danger_accept_invalid_certs",
            &["unknown field", "ca_file", "system_roots"],
        ),
    ];
    for (tls, at, says) in cases {
        let text = format!(
            "listen = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"{https}\"\n[route.tls]\n{tls}\n"
        );
        let err = refused(dir, &text);
        let message = err.to_string();
        let place = format!(
            "{}:{}:",
            dir.join("gateway.toml").display(),
            line_of(&text, at)
        );
        assert!(
            message.starts_with(&place),
            "{tls}: should start with {place}: {message}"
        );
        for s in *says {
            assert!(message.contains(s), "{tls}: should say {s:?}: {message}");
        }
    }
    // TLS settings on an http:// upstream are a mistake, not ignored.
    let text = one_route("http://erp.example.com/svc", "ca_file = \"ca.pem\"");
    let message = refused(dir, &text).to_string();
    assert!(message.contains("https upstream"), "{message}");
    // Relative names are read beside the config file: these load.
    let text = one_route(
        https,
        "ca_file = \"ca.pem\"\nclient_cert_file = \"client.pem\"\nclient_key_file = \"client.key\"",
    );
    let config = Config::from_parts(&Flags::default(), Some((&dir.join("gateway.toml"), &text)))
        .expect("valid TLS files load");
    let tls = config.routes[0]
        .tls
        .as_ref()
        .expect("the route has TLS settings");
    assert!(
        tls.summary.contains("ca.pem (1 certificates)"),
        "{}",
        tls.summary
    );
    assert!(
        tls.summary.contains("client certificate"),
        "{}",
        tls.summary
    );
    // An empty table asks for nothing: the route keeps the shared client.
    let config = Config::from_parts(
        &Flags::default(),
        Some((
            &dir.join("gateway.toml"),
            &one_route(https, "system_roots = false"),
        )),
    )
    .unwrap();
    assert!(config.routes[0].tls.is_none());
}

/// Run the binary on config `file` with `envs` and expect it to refuse to start; its stderr.
/// Waits at most 10 s, so a gateway that starts after all fails the test instead of hanging it.
fn refused_at_start(file: &Path, envs: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut child = support::gateway::gateway_command(&config_args(file), envs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the gateway runs");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("the gateway can be waited for") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the gateway still runs after 10 s; stderr:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap_or_default();
    assert!(!status.success(), "the start should fail: {stderr}");
    stderr
}

#[test]
fn a_missing_ca_file_stops_the_binary_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let text = "[[route]]\nupstream = \"https://erp.example.com/svc\"\n[route.tls]\nca_file = \"/nonexistent/corporate-ca.pem\"\n";
    std::fs::write(&file, text).unwrap();
    let stderr = refused_at_start(&file, &[]);
    let place = format!("{}:4:11:", file.display());
    assert!(stderr.contains(&place), "should name {place}: {stderr}");
    assert!(
        stderr.contains("/nonexistent/corporate-ca.pem") && stderr.contains("expected a PEM file"),
        "{stderr}"
    );
}

#[test]
fn system_roots_with_an_empty_system_store_stop_the_binary_with_file_line_and_what_is_expected() {
    // rustls-native-certs reads only SSL_CERT_FILE / SSL_CERT_DIR when they are set: here an empty
    // bundle and an empty directory of the test's own, so the machine's store plays no part.
    let dir = tempfile::tempdir().unwrap();
    let empty_file = dir.path().join("empty-bundle.pem");
    std::fs::write(&empty_file, "").unwrap();
    let empty_dir = dir.path().join("empty-certs");
    std::fs::create_dir(&empty_dir).unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        one_route("https://erp.example.com/svc", "system_roots = true"),
    )
    .unwrap();
    let stderr = refused_at_start(
        &file,
        &[
            ("SSL_CERT_FILE", empty_file.as_os_str()),
            ("SSL_CERT_DIR", empty_dir.as_os_str()),
        ],
    );
    let place = format!("{}:4:", file.display());
    assert!(stderr.contains(&place), "should name {place}: {stderr}");
    assert!(
        stderr.contains("system_roots") && stderr.contains("no usable certificate"),
        "should say the store is empty: {stderr}"
    );
    assert!(
        stderr.contains("expected the system CA bundle"),
        "should say what is expected: {stderr}"
    );
}

#[test]
fn the_example_tls_table_of_gateway_toml_loads_once_its_files_exist() {
    let pki = Pki::new();
    let client = pki.client_ca.client("gateway");
    pki.write("client.pem", &client.pem);
    pki.write("client.key", &client.key_pem);
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml"))
            .expect("gateway.toml is readable");
    // The table is shown indented in comments, below its explanation.
    let table: String = example
        .lines()
        .skip_while(|l| *l != "#   [route.tls]")
        .map_while(|l| l.strip_prefix("#   "))
        .map(|l| format!("{l}\n"))
        .collect();
    for key in [
        "ca_file",
        "system_roots",
        "client_cert_file",
        "client_key_file",
    ] {
        assert!(
            table.contains(&format!("{key} = ")),
            "the example shows {key}:\n{table}"
        );
    }
    let table = table
        .replace("/etc/ssl/corporate-ca.pem", &pki.path("ca.pem"))
        .replace("/etc/odg/client.pem", &pki.path("client.pem"))
        .replace("/etc/odg/client.key", &pki.path("client.key"))
        // This machine's trust store is not the test's to rely on.
        .replace("system_roots = true", "system_roots = false");
    let text = format!("[[route]]\nupstream = \"https://erp.example.com/svc\"\n{table}");
    let config = Config::from_parts(
        &Flags::default(),
        Some((&pki.dir.path().join("g.toml"), &text)),
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let tls = config.routes[0].tls.as_ref().expect("TLS settings");
    assert!(
        tls.summary.contains("client certificate"),
        "{}",
        tls.summary
    );
}
