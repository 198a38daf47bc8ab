//! End-to-end test with a real client: starts the `ward` binary twice (one server with an API
//! key, one with a queue of one request and an embedding model that never finishes loading) and
//! runs `tests/e2e/openai_client.py`, which drives both with the official `openai` Python SDK.
//! The SDK is installed with pip into a virtual environment under the target directory, reused
//! between runs. The servers are killed when the test ends, also when it fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const API_KEY: &str = "testkey";

/// A running `ward serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = scratch().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("server log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
        cmd.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // Settings come from the arguments, not from whatever WARD_* the test runs under.
        let keep = ["WARD_HOME", "WARD_THREADS", "WARD_LOG"];
        for (k, _) in
            std::env::vars().filter(|(k, _)| k.starts_with("WARD_") && !keep.contains(&k.as_str()))
        {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().expect("starting ward serve");
        let server = Self { child, port, log };
        server.wait_ready();
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn wait_ready(&self) {
        self.wait_for("/health", None, "", "ready");
    }

    /// Polls `GET path` until it answers 200 with a body containing `needle`.
    fn wait_for(&self, path: &str, key: Option<&str>, needle: &str, what: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(600) {
            if let Some((200, body)) = http_get(self.port, path, key)
                && body.contains(needle)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "ward on port {} never got {what}:\n{}",
            self.port,
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-openai");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Status and body of `GET path`, or `None` while nothing answers.
fn http_get(port: u16, path: &str, key: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A virtual environment with the `openai` package, created once and reused.
fn venv_python() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-venv");
    let python = dir.join("bin").join("python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready() {
        run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&dir),
            "python3 -m venv",
        );
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "openai",
            ]),
            "pip install openai",
        );
        assert!(ready(), "openai is not importable after pip install");
    }
    python
}

/// A directory that looks like an embedding model but whose `config.json` is a FIFO: loading
/// it blocks on the read, so the model stays "loading" for as long as the server runs.
fn never_loading_embedder() -> PathBuf {
    let dir = scratch().join("stuck-embedder");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    run(
        Command::new("mkfifo").arg(dir.join("config.json")),
        "mkfifo",
    );
    dir
}

#[test]
fn openai_python_sdk_end_to_end() {
    // Fetch both models before the servers start, so that start-up is just loading.
    ward::catalog::ensure("smollm2-135m-instruct").expect("chat model");
    ward::catalog::ensure("all-minilm-l6-v2").expect("embedding model");
    let python = venv_python();
    let main = Server::start("main", &["--api-key", API_KEY], &[]);
    main.wait_for(
        "/v1/models",
        Some(API_KEY),
        "all-minilm-l6-v2",
        "its embedding model",
    );
    let stuck = never_loading_embedder();
    let busy = Server::start(
        "busy",
        &[],
        &[
            ("WARD_QUEUE_CAPACITY", "1"),
            ("WARD_MAX_RUNNING", "1"),
            ("WARD_EMBEDDING_MODEL", stuck.to_str().unwrap()),
        ],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/openai_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([
            "--base-url",
            &main.url(),
            "--api-key",
            API_KEY,
            "--busy-url",
            &busy.url(),
        ])
        .args(["--busy-embedder", stuck.to_str().unwrap()])
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("running the openai client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the openai SDK checks failed:\n{stdout}\n{}\n--- main server log ---\n{}\n--- busy server log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        main.log_text(),
        busy.log_text()
    );
}
