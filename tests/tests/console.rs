//! The web console in a real browser: headless Chromium driven over
//! WebDriver (chromedriver) against a real `sg-ctl daemon --console` over
//! HTTPS, with a port on a veth in the test's namespaces and real traffic.
//! An owner logs in, makes a group with the SSH preset and a rule of their
//! own (a bad port first, refused on its field as the CLI refuses it),
//! attaches it to the port, sees the rule's counter move as SSH
//! connections are made; a viewer then finds nothing that changes
//! anything, and a change forged with its token is refused. Screenshots
//! go to the test's target directory (`console-*.png`).

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use sg_tests::{
    HOST_V4, PORT, TestDaemon, VethPort, WORKLOAD_V4, addr, guest_mac, require_root, tcp_exchange,
};
use thirtyfour::{ChromiumLikeCapabilities as _, prelude::*};

/// How long the page has for anything it shows (a poll is 1 s).
const WAIT: Duration = Duration::from_secs(20);

/// A child process and its process group, killed when dropped:
/// chromedriver's browser is in its group, and would outlive it alone.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: a signal to the group this child leads; nothing is shared.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// chromedriver on a free loopback port, once it answers.
fn chromedriver() -> Result<(Spawned, u16)> {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting chromedriver; `cargo xtask setup` installs it (chromium-driver)")?;
    let driver = Spawned(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((driver, port))
}

async fn browser(port: u16) -> Result<WebDriver> {
    let mut caps = DesiredCapabilities::chrome();
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1360,900",
        "--lang=en-US",
        // The daemon's certificate is the test's own, self-signed.
        "--ignore-certificate-errors",
    ] {
        caps.add_arg(arg)?;
    }
    Ok(WebDriver::new(format!("http://127.0.0.1:{port}"), caps).await?)
}

/// Where screenshots go.
fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).expect("the screenshots' directory");
    dir
}

/// The whole page as a PNG, through the DevTools protocol.
async fn screenshot(driver: &WebDriver, name: &str) -> Result<PathBuf> {
    // The notices of what was just done would cover the page.
    driver
        .execute(
            "document.getElementById('notices')?.replaceChildren()",
            vec![],
        )
        .await?;
    let metrics = driver
        .cdp()
        .send_raw("Page.getLayoutMetrics", json!({}))
        .await?;
    let size = &metrics["cssContentSize"];
    let (width, height) = (
        size["width"].as_f64().unwrap_or(1360.0),
        size["height"].as_f64().unwrap_or(900.0),
    );
    let shot = driver
        .cdp()
        .send_raw(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}),
        )
        .await?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().context("a screenshot's data")?)?;
    let path = shots().join(format!("{name}.png"));
    std::fs::write(&path, png)?;
    eprintln!("screenshot: {}", path.display());
    Ok(path)
}

/// Waits for an element the page shows.
async fn shown(driver: &WebDriver, css: &str) -> Result<WebElement> {
    driver
        .query(By::Css(css))
        .wait(WAIT, Duration::from_millis(100))
        .and_displayed()
        .first()
        .await
        .with_context(|| format!("waiting for {css}"))
}

/// Waits until `css` holds `wanted`, in any case; returns the text.
async fn text_of(driver: &WebDriver, css: &str, wanted: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = match driver.find(By::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        // Badges are capitalized by the stylesheet.
        if text.to_lowercase().contains(&wanted.to_lowercase()) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("{css} shows {text:?}, not {wanted:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks what `css` finds once it is shown (the page redraws tables
/// when their data change, so an element found may be gone by the click:
/// then it is looked for again).
async fn click(driver: &WebDriver, css: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = async {
            shown(driver, css)
                .await?
                .click()
                .await
                .map_err(anyhow::Error::from)
        };
        match result.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("clicking {css}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn type_into(driver: &WebDriver, css: &str, text: &str) -> Result<()> {
    let input = shown(driver, css).await?;
    input.clear().await?;
    input.send_keys(text).await?;
    Ok(())
}

async fn log_in(driver: &WebDriver, base: &str, token: &str) -> Result<()> {
    driver.goto(format!("{base}/#/groups")).await?;
    type_into(driver, "#login-token", token).await?;
    click(driver, "#login-submit").await?;
    text_of(driver, "#groups-table", "default").await?;
    Ok(())
}

/// `fetch` from the page, as the page's own code would call the API:
/// the status of `method path` with `token` (none: no Authorization).
async fn fetch(
    driver: &WebDriver,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Result<u16> {
    let script = r#"
        const [method, path, token, body, done] = arguments;
        const headers = { "Content-Type": "application/json" };
        if (token) headers.Authorization = `Bearer ${token}`;
        fetch(path, { method, headers, body: method === "GET" ? undefined : JSON.stringify(body) })
            .then((r) => done(r.status), (e) => done(String(e)));
    "#;
    let ret = driver
        .execute_async(script, vec![json!(method), json!(path), json!(token), body])
        .await?;
    ret.json()
        .as_u64()
        .map(|s| s as u16)
        .with_context(|| format!("fetch {method} {path}: {}", ret.json()))
}

/// What the rule `row` (a `tr`) counted, as the page shows it.
async fn hits(row: &WebElement) -> Result<u64> {
    let cell = row.find(By::Css("td.hits")).await?;
    Ok(cell.attr("data-hits").await?.unwrap_or_default().parse()?)
}

/// The row of the ingress rule for `ports`.
async fn rule_row(driver: &WebDriver, ports: &str) -> Result<WebElement> {
    for row in driver.find_all(By::Css("#rules tr[data-rule]")).await? {
        if row.text().await?.split_whitespace().any(|w| w == ports) {
            return Ok(row);
        }
    }
    bail!("no rule for ports {ports} on the page")
}

/// Fails, saying `what`, if the page shows any control that changes
/// something.
async fn offers_no_change(driver: &WebDriver, what: &str) -> Result<()> {
    const CHANGES: &str = "#create-group, [data-action], #add-rule, #presets, #rule-form, \
                           #assign-form, button[type=submit]";
    ensure!(
        driver.find_all(By::Css(CHANGES)).await?.is_empty(),
        "{what}"
    );
    Ok(())
}
/// Submits the rule form with `field` set to `bad`: the page shows, on
/// that field, marked, the message the CLI gives for `cli`.
async fn refused_on_field(
    driver: &WebDriver,
    d: &TestDaemon,
    (field, bad): (&str, &str),
    cli: &[&str],
) -> Result<()> {
    type_into(driver, &format!("#rule-form input[name={field}]"), bad).await?;
    click(driver, "#rule-submit").await?;
    let inline = text_of(driver, &format!("[data-error-for={field}]"), field).await?;
    let cli = cli_refusal(d, cli);
    let on_field = |m: &str| {
        let from = m.find(&format!("{field}: ")).unwrap_or(0);
        m[from..].to_string()
    };
    assert_eq!(
        on_field(&inline),
        on_field(&cli),
        "page: {inline}; CLI: {cli}"
    );
    assert!(
        driver
            .find(By::Css(format!("#rule-form input[name={field}].invalid")))
            .await
            .is_ok(),
        "the field at fault, {field}, is marked"
    );
    Ok(())
}

/// The message of what `sg-ctl ARGS` refused, without its `error: `.
fn cli_refusal(d: &TestDaemon, args: &[&str]) -> String {
    let (code, stderr) = d.fails(args).unwrap();
    assert_eq!(code, 2, "{stderr}");
    // clap's own trailer ("For more information, try '--help'.") aside.
    stderr
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_and_a_viewer_in_a_real_browser() {
    require_root!();
    let veth = VethPort::new().unwrap();
    let dir = tempfile_dir();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.join("console.crt"), dir.join("console.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let console = format!("127.0.0.1:{}", free_port());
    let d = TestDaemon::start_with(&[
        "--console",
        &console,
        "--console-cert",
        cert_file.to_str().unwrap(),
        "--console-key",
        key_file.to_str().unwrap(),
    ])
    .unwrap();
    let base = format!("https://{console}");
    let owner = d.token("owner").unwrap();
    let viewer = d.token("viewer").unwrap();
    let (owner, viewer) = (owner.as_str(), viewer.as_str());
    d.ok(&[
        "--netns",
        veth.host.name(),
        "port",
        "create",
        "vm1",
        "--iface",
        PORT,
        "--mac",
        &guest_mac(),
        "--ip",
        WORKLOAD_V4,
    ])
    .unwrap();

    let (_chromedriver, port) = chromedriver().unwrap();
    let driver = browser(port).await.unwrap();
    let result = owner_then_viewer(&driver, &d, &veth, &base, owner, viewer).await;
    let _ = driver.quit().await;
    result.unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = shots().join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn owner_then_viewer(
    driver: &WebDriver,
    d: &TestDaemon,
    veth: &VethPort,
    base: &str,
    owner: &str,
    viewer: &str,
) -> Result<()> {
    // Over TCP nothing is answered without a token, not even what the
    // socket shows anyone.
    driver.goto(format!("{base}/")).await?;
    shown(driver, "#login-token").await?;
    assert_eq!(
        fetch(driver, "GET", "/v1/groups", None, json!(null)).await?,
        401
    );
    assert_eq!(
        fetch(driver, "GET", "/v1/protocols", None, json!(null)).await?,
        401
    );

    // The owner makes a group.
    log_in(driver, base, owner).await?;
    assert_eq!(
        driver
            .find(By::Id("role"))
            .await?
            .text()
            .await?
            .to_lowercase(),
        "owner"
    );
    text_of(driver, "tr[data-group=default] .note", "cannot be deleted").await?;
    click(driver, "#create-group").await?;
    type_into(driver, "#group-name", "web").await?;
    type_into(driver, "#group-description", "web tier").await?;
    click(driver, "#group-submit").await?;
    shown(driver, "#tab-ingress").await?;

    // The SSH preset, from the host's network only.
    type_into(driver, "#preset-remote", &format!("{HOST_V4}/32")).await?;
    click(driver, "button[data-preset=ssh]").await?;
    text_of(driver, "#rules", "22").await?;

    // A rule of one's own: a bad port first, named on its field as the
    // CLI names it.
    click(driver, "#add-rule").await?;
    type_into(driver, "#rule-form input[name=protocol]", "tcp").await?;
    type_into(driver, "#rule-form input[name=description]", "app").await?;
    refused_on_field(
        driver,
        d,
        ("ports", "70000"),
        &["rule", "add", "web", "--proto", "tcp", "--port", "70000"],
    )
    .await?;
    // A priority out of range, likewise.
    type_into(driver, "#rule-form input[name=ports]", "8080").await?;
    refused_on_field(
        driver,
        d,
        ("priority", "0"),
        &["rule", "add", "web", "--proto", "tcp", "--priority", "0"],
    )
    .await?;
    type_into(driver, "#rule-form input[name=priority]", "900").await?;
    click(driver, "#rule-submit").await?;
    text_of(driver, "#rules", "8080").await?;

    // Attached to the port, by the bulk assign of the group's Ports tab.
    click(driver, "#tab-members").await?;
    click(driver, "#assign-form input[value=vm1]").await?;
    click(driver, "#assign-submit").await?;
    text_of(driver, "#members tr[data-port=vm1]", "active").await?;
    let port = d.json(&["port", "show", "vm1"])?;
    assert_eq!(port["spec"]["groups"], json!(["default", "web"]));

    // Real SSH connections from the host's side: the preset's counter moves
    // on the page, the other rule's stays.
    click(driver, "#tab-ingress").await?;
    let before = hits(&rule_row(driver, "22").await?).await?;
    let to = addr(WORKLOAD_V4);
    let passed = tokio::task::block_in_place(|| {
        (0..3).all(|_| tcp_exchange(&veth.host, &veth.workload, to, 22).unwrap())
    });
    ensure!(passed, "ssh from the host passes the group");
    let deadline = Instant::now() + WAIT;
    let moved = loop {
        let now = match rule_row(driver, "22").await {
            Ok(row) => hits(&row).await.unwrap_or(before),
            Err(_) => before,
        };
        if now > before || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        moved > before,
        "the SSH rule's counter moved on the page ({before} → {moved})"
    );
    assert_eq!(hits(&rule_row(driver, "8080").await?).await?, 0);
    screenshot(driver, "console-group").await?;

    // The rule of one's own edited, by its id, which it keeps; then the
    // IPv6 egress rule deleted.
    let row = rule_row(driver, "8080").await?;
    let id = row
        .attr("data-id")
        .await?
        .context("a rule's id on its row")?;
    ensure!(id.starts_with("r-"), "{id}");
    row.find(By::Css("[data-action=edit]"))
        .await?
        .click()
        .await?;
    type_into(driver, "#rule-form input[name=ports]", "8443").await?;
    click(driver, "#rule-submit").await?;
    text_of(driver, "#rules", "8443").await?;
    click(driver, "#tab-egress").await?;
    click(driver, "#rules tr[data-rule='1'] [data-action=delete]").await?;
    text_of(driver, "#tab-egress", "(1)").await?;
    let web = d.json(&["group", "show", "web"])?;
    let rules = web["spec"]["rules"].as_array().context("rules")?;
    let edited = rules
        .iter()
        .find(|r| r["ports"] == "8443")
        .context("the edited rule")?;
    assert_eq!(edited["id"], json!(id), "{web}");
    assert_eq!(rules.len(), 3, "{web}");

    driver.goto(format!("{base}/#/groups")).await?;
    text_of(driver, "#groups-table", "web tier").await?;
    screenshot(driver, "console-groups").await?;

    // The port: its packets, a chart of SSH passing and pings dropped
    // (nothing lets the host ping it), its flows.
    driver.goto(format!("{base}/#/ports/vm1")).await?;
    text_of(driver, "#port-counters", "pass").await?;
    tokio::task::block_in_place(|| {
        for _ in 0..4 {
            assert!(tcp_exchange(&veth.host, &veth.workload, to, 22).unwrap());
            assert!(!veth.host.ping(to).unwrap(), "no rule lets the host ping");
        }
    });
    text_of(driver, "#port-counters", "drop-default").await?;
    text_of(driver, "#port-flows", "tcp").await?;
    shown(driver, "#port-chart svg polyline").await?;
    text_of(driver, "#port-status", "active").await?;
    screenshot(driver, "console-port").await?;
    driver.goto(format!("{base}/#/protocols")).await?;
    text_of(driver, "#protocols", "ipv6-icmp").await?;
    driver.goto(format!("{base}/#/settings")).await?;
    text_of(driver, "#settings", "max_rules_per_group").await?;

    // A viewer sees it all and finds no control that changes anything.
    click(driver, "#sign-out").await?;
    log_in(driver, base, viewer).await?;
    assert_eq!(
        driver
            .find(By::Id("role"))
            .await?
            .text()
            .await?
            .to_lowercase(),
        "viewer"
    );
    offers_no_change(driver, "the groups page offers no change").await?;
    driver.goto(format!("{base}/#/groups/web")).await?;
    text_of(driver, "#rules", "8443").await?;
    offers_no_change(driver, "a group offers no change").await?;
    click(driver, "#tab-members").await?;
    text_of(driver, "#members", "vm1").await?;
    offers_no_change(driver, "its ports offer no change").await?;
    driver.goto(format!("{base}/#/ports/vm1")).await?;
    text_of(driver, "#port-groups", "web").await?;
    offers_no_change(driver, "a port offers no change").await?;
    screenshot(driver, "console-port-viewer").await?;

    // What the page would have sent, forged with the viewer's token: 403.
    let rule = json!([{"direction": "ingress", "protocol": "tcp", "ports": "3306"}]);
    assert_eq!(
        fetch(driver, "POST", "/v1/groups/web/rules", Some(viewer), rule).await?,
        403
    );
    let group = json!({"name": "forged"});
    assert_eq!(
        fetch(driver, "POST", "/v1/groups", Some(viewer), group).await?,
        403
    );
    let ports = json!({"ports": ["vm1"]});
    assert_eq!(
        fetch(
            driver,
            "POST",
            "/v1/groups/default/assign",
            Some(viewer),
            ports
        )
        .await?,
        403
    );
    assert_eq!(
        fetch(
            driver,
            "DELETE",
            "/v1/groups/web/rules/2",
            Some(viewer),
            json!(null)
        )
        .await?,
        403
    );
    assert_eq!(
        fetch(driver, "GET", "/v1/groups", Some(viewer), json!(null)).await?,
        200
    );
    let web = d.json(&["group", "show", "web"])?;
    assert_eq!(
        web["spec"]["rules"].as_array().map(Vec::len),
        Some(3),
        "{web}"
    );
    Ok(())
}
