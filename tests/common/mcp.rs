//! The MCP tool server of the tests (tests/mcp/tool_server.py, PyPI `mcp` SDK), started on
//! streamable HTTP on a free port, or named for stdio.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};

pub const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/tool_server.py");

pub fn python() -> String {
    std::env::var("CONFAB_TEST_MCP_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/confab/tools/mcp-venv/bin/python")
    })
}

/// The tool server on streamable HTTP; killed when dropped.
pub struct HttpTools {
    child: Child,
    pub url: String,
}

impl Drop for HttpTools {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn http_tools() -> HttpTools {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python())
        .args([SERVER, "http", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the MCP test server starts (is PyPI `mcp` installed? see scripts/test.sh)");
    super::wait_port(port).await;
    HttpTools {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    }
}
