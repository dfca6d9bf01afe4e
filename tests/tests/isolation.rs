//! No local user can take the control plane from the others (issue 16):
//! a real daemon against clients that hang up early, hold the old lock
//! files, hold every connection they can, send documents too large, names
//! with escape sequences and values no field takes. The hostile user is
//! `nobody`: a thread of the test that gave up root (`sg_tests::as_user`),
//! or `sg-ctl` run as that user.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use sg_tests::{Netns, TestDaemon, as_user, require_root};

/// The `nobody` user: a local client with neither root nor a token.
const NOBODY: u32 = 65534;
/// How many connections the daemon holds of one uid (`Limits::api`).
const PER_UID: usize = 64;
/// How long the daemon waits for a request head (`http::HEAD_TIMEOUT`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test waits for an answer it expects.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Sends `request` (whose head is to end with `Connection: close`) on a
/// fresh connection and reads the answer whole: status and body.
fn request(d: &TestDaemon, request: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(d.socket()).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let answer = answer_of(&mut stream, ANSWER_WAIT).expect("an answer");
    let status = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {answer}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body);
    (status, body.unwrap_or_default().to_string())
}

/// What the daemon answered on `stream` until it closed it, or `None`
/// while it answers nothing within `wait` (once it has begun, the rest
/// has [`ANSWER_WAIT`]). A reset after the answer (the daemon closed with
/// what we sent unread) ends it as a close would.
fn answer_of(stream: &mut UnixStream, wait: Duration) -> Option<String> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if answer.is_empty() {
                    stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
                }
                answer.extend_from_slice(&chunk[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if answer.is_empty() {
                    return None;
                }
                panic!("an answer cut short: {}", String::from_utf8_lossy(&answer));
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !answer.is_empty() => break,
            Err(e) => panic!("{e}"),
        }
    }
    Some(String::from_utf8(answer).unwrap())
}

/// The `error` of a JSON error body.
fn error_of(body: &str) -> String {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    json["error"].as_str().unwrap_or_default().to_string()
}

fn settings_request() -> &'static str {
    "GET /v1/settings HTTP/1.1\r\nHost: sg\r\nConnection: close\r\n\r\n"
}

/// A client hanging up early, in every way, ends its own connection: the
/// daemon goes on answering (before, it died of SIGPIPE, exit 141).
#[test]
fn the_daemon_outlives_clients_that_hang_up() {
    require_root!();
    let mut d = TestDaemon::start().unwrap();
    // An answer larger than the socket's buffers, for hanging up in it.
    let rules: Vec<String> = (0..4000)
        .map(|i| {
            format!(
                "      - {{direction: ingress, protocol: tcp, ports: {}}}\n",
                i + 1
            )
        })
        .collect();
    let policy = d.dir().join("large.yaml");
    fs::write(
        &policy,
        format!(
            "settings: {{max_rules_per_group: 5000}}\ngroups:\n  - name: big\n    rules:\n{}",
            rules.concat()
        ),
    )
    .unwrap();
    d.ok(&["apply", "-f", policy.to_str().unwrap()]).unwrap();

    let hang_ups: [(&str, &[u8], usize); 4] = [
        ("a malformed request", b"GARBAGE\x01\r\n\r\n", 0),
        (
            "a body shorter than its Content-Length",
            b"PUT /v1/settings HTTP/1.1\r\nHost: sg\r\nContent-Length: 100000\r\n\r\n{\"max",
            0,
        ),
        ("a head cut short", b"GET /v1/settings HTTP/1.1\r\nHo", 0),
        (
            "a reader gone in the middle of the answer",
            b"GET /v1/export HTTP/1.1\r\nHost: sg\r\n\r\n",
            100,
        ),
    ];
    for (what, sent, read) in hang_ups {
        for _ in 0..5 {
            let mut stream = UnixStream::connect(d.socket()).unwrap();
            stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
            stream.write_all(sent).unwrap();
            let mut start = vec![0; read];
            stream.read_exact(&mut start).unwrap();
        }
        d.running().unwrap_or_else(|e| panic!("after {what}: {e}"));
        let settings = d.json(&["settings", "show"]).unwrap();
        assert_eq!(settings["max_rules_per_group"], 5000, "after {what}");
    }
    d.running().unwrap();
}

/// The old lock paths, pre-created or held by `nobody`, stop nothing; the
/// new ones are out of every other user's reach, and a lock held too long
/// is an error that names it and its holder.
#[test]
fn locks_are_roots_alone_and_taken_with_a_bounded_wait() {
    require_root!();
    let mut d = TestDaemon::stopped(&[]).unwrap();
    // Where earlier versions kept their locks, readable by anyone: nobody
    // creates one in /run/lock (anyone may) and holds both.
    let old_pins = PathBuf::from(format!(
        "/run/lock/sg{}.lock",
        d.pins.dir().replace('/', "_")
    ));
    let old_db = PathBuf::from(format!("{}.lock", d.db().display()));
    File::create(&old_db).unwrap();
    fs::set_permissions(&old_db, fs::Permissions::from_mode(0o644)).unwrap();
    let _old = Removed(vec![old_pins.clone(), old_db.clone()]);
    let (stop, stopped) = mpsc::channel::<()>();
    let (held, holding) = mpsc::channel();
    let holder = as_user(NOBODY, move || {
        let open = |path: &Path| {
            let file = OpenOptions::new()
                .read(true)
                .write(path.starts_with("/run/lock"))
                .create(path.starts_with("/run/lock"))
                .truncate(false)
                .open(path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Flock::lock(file, FlockArg::LockExclusiveNonblock)
                .unwrap_or_else(|(_, e)| panic!("{}: {e}", path.display()))
        };
        let _locks = (open(&old_pins), open(&old_db));
        held.send(()).unwrap();
        let _ = stopped.recv();
    });
    holding.recv_timeout(Duration::from_secs(10)).unwrap();

    d.spawn().unwrap();
    let ns = Netns::new().unwrap();
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "e0"])
        .unwrap();
    for dev in ["d0", "e0"] {
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    let started = Instant::now();
    d.ok(&[
        "--netns",
        ns.name(),
        "port",
        "create",
        "vm1",
        "--iface",
        "d0",
        "--mac",
        "52:54:00:12:34:56",
    ])
    .unwrap();
    let vm1 = d.json(&["port", "show", "vm1"]).unwrap();
    assert_eq!(vm1["status"]["state"], "active", "{vm1}");
    eprintln!(
        "a port attached in {:?} while nobody held the old locks",
        started.elapsed()
    );
    stop.send(()).unwrap();
    holder.join().unwrap().unwrap();

    // The new locks: nobody opens neither the files nor their directories.
    let pins_lock = d.pins.pins.lock_path();
    let db_lock = sg_ctl::store::lock_dir(&d.db()).join("daemon.lock");
    for path in [&pins_lock, &db_lock] {
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path), 0o600, "{}", path.display());
        assert_eq!(mode(path.parent().unwrap()), 0o700, "{}", path.display());
        let path = path.to_path_buf();
        let opened = as_user(NOBODY, move || File::open(&path).map(drop))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(opened.unwrap_err().kind(), ErrorKind::PermissionDenied);
    }

    // A second daemon on the same database gives up after its wait,
    // naming the first.
    let out = std::process::Command::new(sg_tests::sg_ctl_binary())
        .arg("--socket")
        .arg(d.dir().join("second.sock"))
        .args(["daemon", "--db"])
        .arg(d.db())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    let first = format!("is in use by pid {} (sg-ctl, uid 0)", d.pid().unwrap());
    assert!(message.contains(&first), "{message}");

    // The datapath's lock held (here by the test, as root): a change
    // waits, then says which lock and who holds it.
    let name = pins_lock.file_name().unwrap().to_str().unwrap();
    let dir = pins_lock.parent().unwrap();
    let wait = Duration::from_secs(1);
    let _held = sg_ctl::lock::acquire(dir, name, "the test", wait).unwrap();
    let started = Instant::now();
    let out = d
        .pins
        .sg_ctl(&["--netns", ns.name(), "detach", "d0"])
        .unwrap();
    let waited = started.elapsed();
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{} is held by pid {} (",
        pins_lock.display(),
        std::process::id()
    );
    assert!(message.contains(&expected), "{message}");
    assert!(message.contains("was not given up within 10s"), "{message}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

/// `port create vm1 --iface IFACE --mac … EXTRA`, which is to fail: its
/// exit code and message.
fn create_port(d: &TestDaemon, iface: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "port",
        "create",
        "vm1",
        "--iface",
        iface,
        "--mac",
        "52:54:00:12:34:56",
    ];
    args.extend_from_slice(extra);
    d.fails(&args).unwrap()
}

/// Removes these files when dropped.
struct Removed(Vec<PathBuf>);

impl Drop for Removed {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// `nobody` opens as many connections as it can (a thousand past the
/// limit), each with its request head unfinished: the daemon holds 64,
/// refuses the rest at once, closes those it holds when their head is
/// late, and root is answered all along.
#[test]
fn root_is_answered_while_nobody_holds_every_connection_it_can() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let socket = d.socket();
    // A thousand past the limit, as the descriptors of the test allow.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let room = usize::try_from(hard.saturating_sub(256)).unwrap_or(usize::MAX);
    let tried = (PER_UID + 1000).min(room);
    assert!(tried > PER_UID + 10, "only {hard} descriptors");
    let flood = as_user(NOBODY, move || {
        (0..tried)
            .map(|_| {
                let mut stream = UnixStream::connect(&socket).unwrap();
                // A connection refused at once may be closed already.
                let _ = stream.write_all(b"GET /v1/settings HTTP/1.1\r\nHost: sg\r\n");
                stream
            })
            .collect::<Vec<_>>()
    });

    // Root asks while nobody connects, and 20 times once it has.
    let (mut asked, mut worst) = (0, Duration::ZERO);
    let mut ask = || {
        let started = Instant::now();
        let (status, body) = request(&d, settings_request());
        worst = worst.max(started.elapsed());
        assert_eq!(status, 200, "{body}");
        asked += 1;
    };
    while !flood.is_finished() {
        ask();
    }
    let streams = flood.join().unwrap().unwrap();
    let connected = Instant::now();
    for _ in 0..20 {
        ask();
    }
    let measured = connected.elapsed();

    // The connections past the limit are answered 503 and closed at once;
    // those held get nothing until their head is late, then a 408 (on a
    // slow machine, maybe already).
    let (mut refused, mut late) = (0, 0);
    let mut held = streams;
    let deadline = Instant::now() + ANSWER_WAIT;
    while refused < tried - PER_UID && Instant::now() < deadline {
        let mut unanswered = Vec::new();
        for mut stream in held {
            let Some(answer) = answer_of(&mut stream, Duration::from_millis(1)) else {
                unanswered.push(stream);
                continue;
            };
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            if head.starts_with("HTTP/1.1 408") {
                assert!(error_of(body).starts_with("the request head did not arrive within 5 s"));
                late += 1;
                continue;
            }
            assert!(head.starts_with("HTTP/1.1 503"), "{answer}");
            assert!(
                error_of(body).starts_with("too many connections from uid 65534 (64 at once)"),
                "{body}"
            );
            refused += 1;
        }
        held = unanswered;
    }
    eprintln!(
        "nobody tried {tried} connections: {} held, {refused} refused; root's worst of {asked} \
         GET /v1/settings during and after: {worst:?} (the last 20 within {measured:?})",
        held.len() + late
    );
    assert!(held.len() + late <= PER_UID, "{} held", held.len() + late);
    assert_eq!(refused, tried - PER_UID);

    // A late head is answered 408 and closed.
    if late == 0 {
        let answer = answer_of(&mut held[0], HEAD_TIMEOUT * 4).expect("an answer to a late head");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(error_of(body).starts_with("the request head did not arrive within 5 s"));
    }
}

/// A policy file of 25,000 rules (about 3 MB sent) applies; a body over the
/// limit is read, refused with a JSON 413, and the CLI prints it and exits
/// 2 (before, it died of SIGPIPE with nothing printed).
#[test]
fn large_applies_work_and_too_large_ones_say_so() {
    require_root!();
    let mut d = TestDaemon::start().unwrap();
    let mut file = String::from(
        "settings: {max_rules_per_group: 30000}\ngroups:\n  - name: big\n    rules:\n",
    );
    for i in 0..25_000u32 {
        let [_, _, high, low] = i.to_be_bytes();
        file += &format!(
            "      - {{direction: ingress, protocol: tcp, ports: {}, remote: 198.19.{high}.{low}/32, \
             description: rule {i}}}\n",
            1 + i % 65535
        );
    }
    let policy = d.dir().join("policy.yaml");
    fs::write(&policy, &file).unwrap();
    let started = Instant::now();
    let applied = d.ok(&["apply", "-f", policy.to_str().unwrap()]).unwrap();
    eprintln!(
        "applied {} bytes of YAML, 25000 rules, in {:?}",
        file.len(),
        started.elapsed()
    );
    assert_eq!(
        applied.trim(),
        "+ group big\n~ settings settings (max_rules_per_group)"
    );
    let big = d.json(&["group", "show", "big"]).unwrap();
    assert_eq!(big["spec"]["rules"].as_array().map(Vec::len), Some(25_000));

    // One description of 70 MB: refused for its size before anything reads
    // it as a policy.
    let huge = d.dir().join("huge.yaml");
    let mut out = File::create(&huge).unwrap();
    out.write_all(b"groups:\n  - name: huge\n    description: ")
        .unwrap();
    out.write_all(&vec![b'x'; 70 << 20]).unwrap();
    out.write_all(b"\n").unwrap();
    drop(out);
    let (code, message) = d.fails(&["apply", "-f", huge.to_str().unwrap()]).unwrap();
    fs::remove_file(&huge).unwrap();
    assert_eq!(code, 2, "{message}");
    assert!(
        message.starts_with(
            "sg-ctl: the daemon answered 413 Payload Too Large: the request's body is"
        ),
        "{message}"
    );
    assert!(
        message.ends_with("over the limit of 67108864 (64 MiB); send a smaller document"),
        "{message}"
    );
    d.running().unwrap();
}

/// Control characters: refused in names, shown escaped in descriptions,
/// to anonymous readers of public groups too.
#[test]
fn control_characters_never_reach_the_terminal() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let (code, message) = d.fails(&["group", "create", "web\x1b[2J"]).unwrap();
    assert_eq!(code, 2);
    assert!(
        message.starts_with(r"sg-ctl: name: 'web\u{1b}[2J' contains '\u{1b}'"),
        "{message}"
    );
    let (code, message) = create_port(&d, "tap\x1b]0;x\x07", &[]);
    assert_eq!(code, 2);
    assert!(
        message.contains(r"ifname: 'tap\u{1b}]0;x\u{7}' is not an interface name"),
        "{message}"
    );

    d.ok(&[
        "group",
        "create",
        "web",
        "--public",
        "--description",
        "\x1b[31mred\x1b[0m",
    ])
    .unwrap();
    d.ok(&["rule", "add", "web", "--description", "\x1b]0;owned\x07"])
        .unwrap();
    let escaped_group = r"\u{1b}[31mred\u{1b}[0m";
    let escaped_rule = r"\u{1b}]0;owned\u{7}";
    let printed: [(&[&str], Option<u32>, &str); 4] = [
        (&["group", "list"], None, escaped_group),
        (&["group", "show", "web"], None, escaped_rule),
        (&["rule", "list", "web"], None, escaped_rule),
        (&["group", "list"], Some(NOBODY), escaped_group),
    ];
    for (args, uid, expected) in printed {
        let out = d.sg_ctl_as(uid, args).unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(!out.stdout.contains(&0x1b), "{args:?} printed a raw ESC");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(expected), "{args:?}: {text}");
    }
    let show = String::from_utf8(d.sg_ctl(&["group", "show", "web"]).unwrap().stdout).unwrap();
    assert!(show.contains(escaped_group), "{show}");
}

/// Every error names its field and quotes at most 64 characters of the
/// value: the cases of issue 16, from the command line, files and the API.
#[test]
fn every_error_names_its_field() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let (code, message) = d
        .fails(&["settings", "set", "max_rules_per_group", "abc"])
        .unwrap();
    assert_eq!(code, 2);
    assert_eq!(
        message,
        "sg-ctl: max_rules_per_group: 'abc' is not a number; use a whole number, 1 or more"
    );
    let (code, message) = create_port(&d, "tap1", &["--ip", "198.18.0.0/24"]);
    assert_eq!(code, 2);
    assert!(
        message.contains(
            "'198.18.0.0/24' for '--ip <IPS>': 198.18.0.0/24 is a prefix, not an address"
        ),
        "{message}"
    );

    let files = [
        (
            "remote: {group: x, extra: 1}",
            "group 'web': rules[0]: remote: 'extra' is not a key of a remote; a map names a \
             group, as {group: NAME}",
        ),
        (
            "protocol: tcp, ports: 80.5",
            "group 'web': rules[0]: ports: '80.5' is not a port; use a number 1-65535",
        ),
        (
            "priority: 18446744073709551616",
            "group 'web': rules[0]: priority: 18446744073709551616 is out of range; use \
             1-65535 (1 goes first) (line 4",
        ),
    ];
    let policy = d.dir().join("policy.yaml");
    for (fields, expected) in files {
        fs::write(
            &policy,
            format!(
                "groups:\n  - name: web\n    rules:\n      - {{direction: ingress, {fields}}}\n"
            ),
        )
        .unwrap();
        let (code, message) = d.fails(&["apply", "-f", policy.to_str().unwrap()]).unwrap();
        assert_eq!(code, 2, "{message}");
        let expected = format!("sg-ctl: {}: {expected}", policy.display());
        assert!(message.starts_with(&expected), "{message}");
    }

    let body = r#"{"name": "web", "rules": [{"direction": "ingress", "protocol": "icmp",
                   "icmp": {"type": 256}}]}"#;
    let (status, answer) = request(
        &d,
        &format!(
            "POST /v1/groups HTTP/1.1\r\nHost: sg\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&answer),
        "group 'web': rules[0]: icmp.type: 256 is out of range; use 0-255"
    );

    let long = "x".repeat(10_000);
    let (code, message) = d.fails(&["group", "create", &long]).unwrap();
    assert_eq!(code, 2);
    assert!(message.len() < 300, "{} bytes: {message}", message.len());
    assert!(
        message.starts_with(&format!(
            "sg-ctl: name: '{}…' (10000 characters) has 10000 characters",
            "x".repeat(64)
        )),
        "{message}"
    );
    let (status, answer) = request(
        &d,
        &format!("GET /v1/groups/{long} HTTP/1.1\r\nHost: sg\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 414);
    assert!(error_of(&answer).starts_with("the request target is over 8 KiB"));

    // The scheme of Authorization in any case (RFC 7235).
    let token = d.token("viewer").unwrap();
    for scheme in ["bearer", "BEARER"] {
        let (status, answer) = request(
            &d,
            &format!(
                "GET /v1/settings HTTP/1.1\r\nHost: sg\r\nConnection: close\r\n\
                 Authorization: {scheme} {}\r\n\r\n",
                token
            ),
        );
        assert_eq!(status, 200, "{scheme}: {answer}");
    }
}

/// A rule change on a group that 200 ports attach takes seconds (every
/// port's policy is compiled and installed again); reads are answered all
/// the while, from the state the last change left, and see the change
/// only once it is whole (before, each waited behind it).
#[test]
fn reads_are_answered_during_a_200_port_change() {
    require_root!();
    const PORTS: usize = 200;
    let ns = Netns::with_interfaces(PORTS).unwrap();
    let d = TestDaemon::start().unwrap();
    let mut file =
        String::from("groups:\n  - name: web\n    rules:\n      - {direction: egress}\nports:\n");
    for i in 0..PORTS {
        let [_, _, high, low] = u32::try_from(i).unwrap().to_be_bytes();
        file += &format!(
            "  - {{name: p{i}, ifname: d{i}, netns: {}, mac: '52:54:00:00:{high:02x}:{low:02x}', \
             ips: [198.18.{high}.{}], groups: [web]}}\n",
            ns.name(),
            u16::from(low) + 1,
        );
    }
    let policy = d.dir().join("ports.yaml");
    fs::write(&policy, file).unwrap();
    let started = Instant::now();
    d.ok(&["apply", "-f", policy.to_str().unwrap()]).unwrap();
    eprintln!("{PORTS} ports attached in {:?}", started.elapsed());

    let (done, finished) = mpsc::channel();
    std::thread::scope(|scope| {
        let changing = scope.spawn(|| {
            let started = Instant::now();
            let added = d.ok(&["rule", "add", "web", "--proto", "tcp", "--port", "80"]);
            done.send(()).unwrap();
            added.map(|_| started.elapsed())
        });
        let (mut answered, mut worst, mut changed) = (0, Duration::ZERO, false);
        while finished.try_recv().is_err() {
            let asked = Instant::now();
            let (status, body) = request(&d, settings_request());
            assert_eq!(status, 200, "{body}");
            let (status, body) = request(
                &d,
                "GET /v1/groups/web HTTP/1.1\r\nHost: sg\r\nConnection: close\r\n\r\n",
            );
            assert_eq!(status, 200, "{body}");
            worst = worst.max(asked.elapsed());
            let rules = serde_json::from_str::<Value>(&body).unwrap()["spec"]["rules"]
                .as_array()
                .map_or(0, Vec::len);
            // The new rule, once seen, stays (the change is published whole,
            // just before its answer).
            assert!(rules == 2 || (rules == 1 && !changed), "{rules} rules");
            changed = rules == 2;
            answered += 1;
        }
        let took = changing.join().unwrap().unwrap();
        eprintln!(
            "the rule change on {PORTS} ports took {took:?}; {answered} pairs of reads answered \
             meanwhile, the slowest pair in {worst:?}"
        );
        assert!(answered > 1, "{answered} reads answered during the change");
        assert!(
            worst < took / 2,
            "a read waited {worst:?} of the change's {took:?}"
        );
    });
    let web = d.json(&["group", "show", "web"]).unwrap();
    assert_eq!(web["spec"]["rules"].as_array().map(Vec::len), Some(2));
}
