//! A container runtime's part of CNI, as libcni plays it: a conflist's
//! plugins run in order with the specification's environment and the
//! network configuration on stdin, each one's result the next one's
//! `prevResult`; the final result is cached for CHECK (every plugin gets
//! it) and DEL (in reverse order). The plugins run inside a "host"
//! namespace (`ip netns exec`), so that the bridge stays out of the
//! machine's own.

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long one plugin may take: it runs or fails well within that.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A container: its id, namespace, interface and `CNI_ARGS`.
pub struct Container {
    pub id: String,
    /// An `ip netns` name; `CNI_NETNS` is its path.
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Container {
    pub fn new(id: &str, netns: &str) -> Self {
        Self {
            id: id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            args: String::new(),
        }
    }

    pub fn with_args(self, args: &str) -> Self {
        Self {
            args: args.into(),
            ..self
        }
    }
}

/// A plugin that failed, and the error object it wrote.
#[derive(Debug)]
pub struct Failure {
    pub plugin: String,
    pub error: Value,
}

/// The runtime of one network (a conflist).
pub struct Runtime {
    host: String,
    conflist: Value,
    /// `CNI_PATH`: where the plugins are.
    path: Vec<PathBuf>,
    cache: PathBuf,
}

impl Runtime {
    /// Runs `conflist`'s plugins from `path` in the namespace `host`,
    /// caching results in `cache`.
    pub fn new(host: &str, conflist: Value, path: Vec<PathBuf>, cache: &Path) -> Self {
        fs::create_dir_all(cache).unwrap();
        Self {
            host: host.into(),
            conflist,
            path,
            cache: cache.into(),
        }
    }

    fn cached(&self, container: &Container) -> PathBuf {
        let name = self.conflist["name"].as_str().unwrap();
        self.cache
            .join(format!("{name}-{}-{}.json", container.id, container.ifname))
    }

    fn plugins(&self) -> &Vec<Value> {
        self.conflist["plugins"].as_array().unwrap()
    }

    /// ADD: the final result, cached.
    pub fn add(&self, container: &Container) -> Result<Value, Failure> {
        let mut result = None;
        for plugin in self.plugins() {
            result = self.invoke(plugin, "ADD", container, result.as_ref())?;
        }
        let result = result.expect("ADD gives a result");
        fs::write(self.cached(container), result.to_string()).unwrap();
        Ok(result)
    }

    /// CHECK: every plugin, with the cached result.
    pub fn check(&self, container: &Container) -> Result<(), Failure> {
        let cached: Value =
            serde_json::from_str(&fs::read_to_string(self.cached(container)).unwrap()).unwrap();
        for plugin in self.plugins() {
            self.invoke(plugin, "CHECK", container, Some(&cached))?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order, with the cached result if there
    /// is one; the cache goes when all succeeded.
    pub fn del(&self, container: &Container) -> Result<(), Failure> {
        let file = self.cached(container);
        let cached: Option<Value> = fs::read_to_string(&file)
            .ok()
            .map(|text| serde_json::from_str(&text).unwrap());
        for plugin in self.plugins().iter().rev() {
            self.invoke(plugin, "DEL", container, cached.as_ref())?;
        }
        let _ = fs::remove_file(file);
        Ok(())
    }

    /// Runs one plugin: the network's name and version and `prev` joined
    /// to its configuration on stdin, the command and container in the
    /// environment (nothing else but PATH); its result, if it printed one.
    fn invoke(
        &self,
        plugin: &Value,
        command: &str,
        container: &Container,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, Failure> {
        let kind = plugin["type"].as_str().unwrap();
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let exe = self
            .path
            .iter()
            .map(|dir| dir.join(kind))
            .find(|exe| exe.exists())
            .unwrap_or_else(|| panic!("plugin {kind} is in none of {:?}", self.path));
        let path = std::env::join_paths(&self.path).unwrap();
        let mut process = Command::new("ip");
        process
            .args(["netns", "exec", &self.host])
            .arg(&exe)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &container.id)
            .env("CNI_NETNS", format!("/run/netns/{}", container.netns))
            .env("CNI_IFNAME", &container.ifname)
            .env("CNI_ARGS", &container.args)
            .env("CNI_PATH", path);
        let started = Instant::now();
        let (status, stdout, stderr) = run(&mut process, &conf.to_string());
        eprintln!("{command} {kind}: {:?}", started.elapsed());
        let output = (!stdout.trim().is_empty()).then(|| {
            serde_json::from_str::<Value>(&stdout)
                .unwrap_or_else(|e| panic!("{command} {kind} printed no JSON ({e}): {stdout}"))
        });
        if status.success() {
            return Ok(output);
        }
        assert_eq!(
            status.code(),
            Some(1),
            "{command} {kind}: {stdout} {stderr}"
        );
        Err(Failure {
            plugin: kind.into(),
            error: output.unwrap_or_else(|| {
                panic!("{command} {kind} failed with no error object: {stderr}")
            }),
        })
    }
}

/// Runs a plugin with `input` on its stdin, for [`PLUGIN_TIMEOUT`] at
/// most: its exit status, stdout and stderr.
pub fn run(plugin: &mut Command, input: &str) -> (ExitStatus, String, String) {
    let mut child = plugin
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{plugin:?} took more than {PLUGIN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stdout, stderr)
}
