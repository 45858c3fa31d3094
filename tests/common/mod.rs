//! Shared helpers for the scenario tests: run our binary and the oracle side by side in a scratch
//! directory with one PEP directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

/// The oracle launcher: `$OMEMO_ORACLE`, else `../shared/oracle/oracle` beside the project.
pub fn oracle_path() -> PathBuf {
    if let Ok(p) = std::env::var("OMEMO_ORACLE") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/oracle/oracle")
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("omemo-muc-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }
    pub fn pep(&self) -> PathBuf {
        self.dir.join("pep")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How long one run of a program may take in a test: generous for a loaded two-core machine, and still
/// a clear failure instead of a test run that never ends.
pub const PROGRAM_SECONDS: u64 = 180;

fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::piped());
    let mut child = spawn(cmd);
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).unwrap();
        }
    }
    wait_within(child, PROGRAM_SECONDS, &what).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `cmd` with its output piped, in a process group of its own (so that [`wait_within`] can stop
/// whatever it started).
pub fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// [`spawn`], then [`wait_within`].
pub fn run_within(cmd: Command, secs: u64, what: &str) -> Result<Output, String> {
    wait_within(spawn(cmd), secs, what)
}

/// Waits at most `secs` seconds for `child` (best started by [`spawn`]), reading its output meanwhile. Past
/// that, its whole process group is killed and the error says so, with what it had written to stderr.
/// A daemon the child started may keep its pipes open: what the pipes gave within a few seconds of the
/// child's exit is the output then.
pub fn wait_within(mut child: Child, secs: u64, what: &str) -> Result<Output, String> {
    // What a pipe gave (so far), and a channel that closes when the pipe does.
    type Gathered = (Arc<Mutex<Vec<u8>>>, mpsc::Receiver<()>);
    fn reader(pipe: Option<impl Read + Send + 'static>) -> Gathered {
        let all = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed) = mpsc::channel();
        let into = all.clone();
        std::thread::spawn(move || {
            let _closes = closed_tx;
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                into.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (all, closed)
    }
    fn gathered((all, closed): &Gathered, wait: Duration) -> Vec<u8> {
        let _ = closed.recv_timeout(wait);
        std::mem::take(&mut *all.lock().unwrap())
    }
    let (out, err) = (reader(child.stdout.take()), reader(child.stderr.take()));
    let group = child.id();
    let (exited_tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited_tx.send(child.wait());
    });
    let status = match exited.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("{what}: {e}")),
        Err(_) => {
            // Its group, if `spawn` started it; the child itself in any case.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}"), &group.to_string()]).status();
            let _ = exited.recv_timeout(Duration::from_secs(2));
            let stderr = gathered(&err, Duration::from_secs(2));
            return Err(format!(
                "{what}: not done within {secs} s, killed; its stderr: {}",
                String::from_utf8_lossy(&stderr)
            ));
        }
    };
    let stdout = gathered(&out, Duration::from_secs(5));
    let stderr = gathered(&err, Duration::from_secs(1));
    Ok(Output { status, stdout, stderr })
}

/// One of our devices: a store file and a JID.
#[derive(Debug)]
pub struct Ours<'a> {
    pub s: &'a Scratch,
    pub jid: String,
    pub store: PathBuf,
}

impl<'a> Ours<'a> {
    pub fn new(s: &'a Scratch, jid: &str, name: &str) -> Self {
        let me = Self { s, jid: jid.into(), store: s.dir.join(format!("{name}.sqlite3")) };
        let init = me.ok(&["init"], None);
        assert!(init["device_id"].as_u64().unwrap() > 0);
        me.ok(&["publish"], None);
        me
    }
    /// A device whose store file already exists (no `init`).
    pub fn existing(s: &'a Scratch, jid: &str, store: PathBuf) -> Self {
        Self { s, jid: jid.into(), store }
    }
    pub fn cmd(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_omemo-muc"));
        c.arg("--store").arg(&self.store).arg("--jid").arg(&self.jid);
        c.args(args);
        if matches!(args.first(), Some(&"publish" | &"encrypt" | &"decrypt")) {
            c.arg("--pep").arg(self.s.pep());
        }
        run(c, stdin)
    }
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> Value {
        let o = self.cmd(args, stdin);
        assert!(
            o.status.success(),
            "omemo-muc {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }
    pub fn device_id(&self) -> u64 {
        self.ok(&["fingerprint"], None)["device_id"].as_u64().unwrap()
    }
    pub fn encrypt(&self, to: &[&str], text: &str) -> String {
        let o = self.cmd(&["encrypt", "--to", &to.join(","), "--plaintext", text], None);
        assert!(o.status.success(), "encrypt failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }
    pub fn decrypt(&self, stanza: &str, sender: &str) -> Result<Value, Value> {
        let o = self.cmd(&["decrypt", "--sender", sender], Some(stanza));
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("no JSON from decrypt: {}", String::from_utf8_lossy(&o.stderr)));
        match o.status.code() {
            Some(0) => Ok(v),
            Some(2) => Err(v),
            other => panic!("decrypt exit {other:?}: {}", String::from_utf8_lossy(&o.stderr)),
        }
    }
}

/// One oracle (python-omemo) device.
#[derive(Debug)]
pub struct Oracle<'a> {
    pub s: &'a Scratch,
    pub jid: String,
    pub state: PathBuf,
    /// `oldmemo`, `twomemo` or `both`.
    pub ns: &'static str,
}

impl<'a> Oracle<'a> {
    /// An OMEMO 0.3 oracle device.
    pub fn new(s: &'a Scratch, jid: &str, name: &str) -> Self {
        Self::with_ns(s, jid, name, "oldmemo")
    }

    /// An oracle device speaking `ns` (`oldmemo`, `twomemo` or `both`).
    pub fn with_ns(s: &'a Scratch, jid: &str, name: &str, ns: &'static str) -> Self {
        let path = oracle_path();
        assert!(
            path.exists(),
            "the oracle is missing at {} (set OMEMO_ORACLE, or run ../shared/oracle/setup.sh)",
            path.display()
        );
        let me = Self { s, jid: jid.into(), state: s.dir.join(format!("{name}.json")), ns };
        me.ok(&["init", "--ns", ns], None);
        me
    }

    /// An oracle device whose state file already exists.
    pub fn existing(s: &'a Scratch, jid: &str, state: PathBuf, ns: &'static str) -> Self {
        Self { s, jid: jid.into(), state, ns }
    }
    pub fn cmd(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(oracle_path());
        c.arg(args[0]).arg("--pep").arg(self.s.pep()).arg("--state").arg(&self.state).arg("--jid").arg(&self.jid);
        c.args(&args[1..]);
        run(c, stdin)
    }
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> Value {
        let o = self.cmd(args, stdin);
        assert!(
            o.status.success(),
            "oracle {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }
    pub fn device_id(&self) -> u64 {
        self.ok(&["fingerprint"], None)["device_id"].as_u64().unwrap()
    }
    pub fn encrypt(&self, to: &[&str], text: &str) -> String {
        self.encrypt_with(to, text, &[])
    }
    /// `encrypt` with extra oracle flags (`--room R`, `--sce-to J`, `--raw`, ...).
    pub fn encrypt_with(&self, to: &[&str], text: &str, extra: &[&str]) -> String {
        let ns = if self.ns == "both" { "auto" } else { self.ns };
        let joined = to.join(",");
        let mut args = vec!["encrypt", "--to", joined.as_str(), "--ns", ns, "--plaintext", text];
        args.extend_from_slice(extra);
        let o = self.cmd(&args, None);
        assert!(o.status.success(), "oracle encrypt failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }
    pub fn decrypt(&self, stanza: &str, sender: &str) -> Result<Value, Value> {
        let o = self.cmd(&["decrypt", "--sender", sender], Some(stanza));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        match o.status.code() {
            Some(0) => Ok(v),
            Some(2) => Err(v),
            other => panic!("oracle decrypt exit {other:?}: {}", String::from_utf8_lossy(&o.stderr)),
        }
    }
}

/// Copies a directory tree (fixtures into a scratch directory).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Flips one bit inside the base64 text of the first element named `tag` (keeping it valid base64).
pub fn tamper(stanza: &str, tag: &str) -> String {
    let open = [format!("<{tag} "), format!("<{tag}>")].iter().filter_map(|p| stanza.find(p.as_str())).min().unwrap();
    let start = open + stanza[open..].find('>').unwrap() + 1;
    let end = start + stanza[start..].find('<').unwrap();
    use base64::Engine as _;
    let eng = base64::engine::general_purpose::STANDARD;
    let mut bytes = eng.decode(&stanza[start..end]).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    format!("{}{}{}", &stanza[..start], eng.encode(bytes), &stanza[end..])
}
