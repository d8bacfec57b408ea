//! Servers of the test's own that speak TLS: a throwaway PostgreSQL cluster with `ssl=on`
//! that refuses every TCP connection that is not TLS, and a TLS-only redis-server that
//! requires client certificates. Certificates from [`super::certs`].

use std::path::{Path, PathBuf};
use std::process::Command;

use super::certs::{run, self_signed_ca, signed};
use super::free_port;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// As the `postgres` user (PostgreSQL refuses to run as root).
fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", program]);
    c
}

/// A PostgreSQL cluster of the test's own that accepts TLS connections only.
pub struct TlsPostgres {
    pub dir: PathBuf,
    pub port: u16,
}

impl TlsPostgres {
    pub fn start(name: &str) -> TlsPostgres {
        let dir = std::env::temp_dir().join(format!("cachewarden-tls-{name}"));
        if dir.exists() {
            let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
                .args([
                    "-D",
                    dir.join("data").to_str().unwrap(),
                    "stop",
                    "-m",
                    "immediate",
                ])
                .output();
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        self_signed_ca(&dir, "ca", "cachewarden test CA");
        signed(&dir, "ca", "server", "localhost");
        run(Command::new("chown").args(["-R", "postgres:postgres", dir.to_str().unwrap()]));
        run(Command::new("chmod").args(["0600", dir.join("server.key").to_str().unwrap()]));
        let data = dir.join("data");
        run(as_postgres(&format!("{PG_BIN}/initdb")).args([
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]));
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n\
             ssl = on\nssl_cert_file = '{d}/server.pem'\nssl_key_file = '{d}/server.key'\n\
             wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nfsync = off\n",
            d = dir.display()
        );
        let mut pgconf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        pgconf.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), pgconf).unwrap();
        // Local (socket) set-up by the test; over TCP, TLS or nothing.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n\
             hostssl replication all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n\
             hostnossl replication all 0.0.0.0/0 reject\n",
        )
        .unwrap();
        run(Command::new("chown").args(["-R", "postgres:postgres", dir.to_str().unwrap()]));
        run(as_postgres(&format!("{PG_BIN}/pg_ctl")).args([
            "-D",
            data.to_str().unwrap(),
            "-l",
            dir.join("server.log").to_str().unwrap(),
            "-w",
            "start",
        ]));
        TlsPostgres { dir, port }
    }

    /// SQL over the local socket (no TLS there: the test's own set-up).
    pub fn psql(&self, sql: &str) -> String {
        let out = as_postgres("psql")
            .args([
                "-h",
                self.dir.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
            ])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }

    pub fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args([
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "stop",
                "-m",
                "immediate",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TlsPostgres {
    /// A client over the cluster's Unix socket (the test's own set-up and checks).
    pub async fn client(&self) -> tokio_postgres::Client {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

/// A redis-server of the test's own that speaks TLS only and requires a client certificate.
pub struct TlsRedis {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tls_redis(dir: &Path) -> TlsRedis {
    let port = free_port();
    let file = |f: &str| dir.join(f).display().to_string();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "yes",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    TlsRedis { child, port }
}

impl TlsRedis {
    /// A connection of the test's own, over TLS with the client certificate `client.pem` of
    /// `certs` (waits for the server to start).
    pub async fn connect(&self, certs: &Path) -> redis::aio::MultiplexedConnection {
        let read = |f: &str| std::fs::read(certs.join(f)).unwrap();
        let client = redis::Client::build_with_tls(
            format!("rediss://localhost:{}/0", self.port),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read("client.pem"),
                    client_key: read("client.key"),
                }),
                root_cert: Some(read("ca.pem")),
            },
        )
        .unwrap();
        let start = std::time::Instant::now();
        loop {
            if let Ok(c) = client.get_multiplexed_async_connection().await {
                return c;
            }
            assert!(
                start.elapsed() < super::WAIT,
                "the TLS redis-server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
