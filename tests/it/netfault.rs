//! A fault-injecting TCP proxy between cluster nodes, for partition tests.
//!
//! Each node gets one [`Proxy`] in front of its cluster port (and one in
//! front of its API port, where standbys forward requests): the node
//! advertises the proxy's address as its `cluster_addr` / `api_addr` and
//! binds its own listener elsewhere (`listener { cluster_address }`), so
//! every byte one node sends another passes through the test. The proxy is
//! plain TCP, so it is transparent to TLS between nodes.
//!
//! Links are directed (`from` → `to`): a connection belongs to the node
//! that opened it. The proxy learns who that is from the kernel — the
//! connection's source port is looked up in `/proc/net/tcp{,6}` for the
//! socket's inode, and the inode among the nodes' open file descriptors
//! (`/proc/<pid>/fd`) — so nodes need no change to be told apart. A
//! connection from anything else (the test's own client) is never cut.
//! [`Faults::cut`] refuses new connections of a link and closes the open
//! ones; [`Faults::heal`] lets them through again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The cut links and the nodes' process ids, shared by every proxy.
#[derive(Default)]
pub struct Faults {
    cut: Mutex<BTreeSet<(usize, usize)>>,
    /// Process id of each node (by index), `None` while it is down.
    pids: Mutex<HashMap<usize, u32>>,
    /// Open proxied connections by link.
    open: Mutex<Vec<((usize, usize), AbortHandle)>>,
}

impl Faults {
    pub fn set_pid(&self, node: usize, pid: Option<u32>) {
        let mut p = self.pids.lock().expect("pids");
        match pid {
            Some(pid) => p.insert(node, pid),
            None => p.remove(&node),
        };
    }

    /// Cut every link between a node of `a` and a node of `b`, both ways,
    /// and close the connections they had open.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        let mut cut = self.cut.lock().expect("cut");
        for &x in a {
            for &y in b {
                cut.insert((x, y));
                cut.insert((y, x));
            }
        }
        drop(cut);
        let cut = self.cut.lock().expect("cut").clone();
        self.open.lock().expect("open").retain(|(link, h)| {
            if cut.contains(link) {
                h.abort();
                false
            } else {
                !h.is_finished()
            }
        });
    }

    /// Let every link through again.
    pub fn heal(&self) {
        self.cut.lock().expect("cut").clear();
    }

    fn is_cut(&self, link: (usize, usize)) -> bool {
        self.cut.lock().expect("cut").contains(&link)
    }

    /// Which node opened the connection whose client end is on `peer_port`
    /// towards `listen_port` (see the module docs).
    fn node_of(&self, peer_port: u16, listen_port: u16) -> Option<usize> {
        let inode = socket_inode(peer_port, listen_port)?;
        let needle = format!("socket:[{inode}]");
        let pids = self.pids.lock().expect("pids").clone();
        for (node, pid) in pids {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path())
                    .is_ok_and(|l| l.to_string_lossy() == needle.as_str())
                {
                    return Some(node);
                }
            }
        }
        None
    }
}

/// The inode of the TCP socket whose local port is `local` and remote port
/// `remote`, from `/proc/net/tcp` and `/proc/net/tcp6`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if port(cols[1]) == Some(local) && port(cols[2]) == Some(remote) {
                return cols[9].parse().ok().filter(|i| *i != 0);
            }
        }
    }
    None
}

/// One listening proxy in front of node `to`'s port `target`.
pub struct Proxy {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listen on a free loopback port and forward to `127.0.0.1:target`.
    pub async fn start(faults: Arc<Faults>, to: usize, target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let from = faults.node_of(peer.port(), port);
                if let Some(from) = from
                    && faults.is_cut((from, to))
                {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let f = faults.clone();
                let conn = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    drop(f);
                });
                if let Some(from) = from {
                    let mut open = faults.open.lock().expect("open");
                    open.retain(|(_, h)| !h.is_finished());
                    open.push(((from, to), conn.abort_handle()));
                    drop(open);
                    // Cut while this connection was being set up.
                    if faults.is_cut((from, to)) {
                        conn.abort();
                    }
                }
            }
        });
        Proxy { port, task }
    }
}
