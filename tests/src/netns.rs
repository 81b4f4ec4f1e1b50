//! Separate hosts on one machine: each node of a test cluster in its own Linux network
//! namespace, joined by a bridge in the root namespace where the test's clients run.
//!
//! Node `i` of network `k` is `10.213.k.i`; the bridge is `10.213.k.254`. These addresses exist
//! only inside the namespaces this module creates (and removes on drop). A link between two
//! nodes is cut with a blackhole route in each of their namespaces, so peer traffic between
//! them stops while clients can still reach both: the partition that strands an old leader
//! with clients of its own. Needs root (CAP_NET_ADMIN) and iproute2.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A bridge and one namespace per node.
#[derive(Debug)]
pub struct NetnsNet {
    k: u32,
    nodes: u32,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsNet {
    /// Creates the bridge and `nodes` namespaces. The network number comes from this process's
    /// id and a counter, so parallel tests and test binaries do not collide.
    pub fn create(nodes: u32) -> Result<NetnsNet, String> {
        let k = (std::process::id() * 7 + NEXT.fetch_add(1, Ordering::Relaxed)) % 200 + 20;
        let net = NetnsNet { k, nodes };
        net.remove(); // leftovers of a crashed run with the same number
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.213.{k}.254/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=nodes {
            let ns = net.ns(i);
            let (host, peer) = (format!("rv{k}h{i}"), format!("rv{k}n{i}"));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &br])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                &peer,
            ])?;
            ip(&["-n", &ns, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("rb{}", self.k)
    }

    /// The namespace of node `i`.
    pub fn ns(&self, i: u32) -> String {
        format!("rdbt{}n{i}", self.k)
    }

    /// The address of node `i`.
    pub fn addr(&self, i: u32) -> String {
        format!("10.213.{}.{i}", self.k)
    }

    /// Stops traffic between nodes `a` and `b` (both directions).
    pub fn cut(&self, a: u32, b: u32) {
        self.blackhole("replace", a, b);
    }

    /// Restores traffic between nodes `a` and `b`.
    pub fn heal(&self, a: u32, b: u32) {
        self.blackhole("del", a, b);
    }

    /// Adds (`replace`) or removes (`del`) the blackhole route to the other node in each
    /// node's namespace. A missing route on `del` is fine: the link was not cut. Any other
    /// failure panics with the command and its error: a partition that silently did not
    /// happen (or did not heal) would make a fault test prove nothing, or fail elsewhere.
    fn blackhole(&self, op: &str, a: u32, b: u32) {
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", self.addr(to));
            match ip(&["-n", &self.ns(from), "route", op, "blackhole", &dst]) {
                Ok(()) => {}
                Err(e) if op == "del" && is_missing_route(&e) => {}
                Err(e) => panic!("cannot {op} the link {a}-{b}: {e}"),
            }
        }
    }

    /// Cuts node `a` off from every other node; clients still reach it.
    pub fn isolate(&self, a: u32) {
        for b in (1..=self.nodes).filter(|&b| b != a) {
            self.cut(a, b);
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for a in 1..=self.nodes {
            for b in (a + 1)..=self.nodes {
                self.heal(a, b);
            }
        }
    }

    fn remove(&self) {
        for i in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &format!("rv{}h{i}", self.k)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// True for the error of `ip route del` when there is no such route (ESRCH, which iproute2
/// prints as "No such process").
fn is_missing_route(err: &str) -> bool {
    err.ends_with("RTNETLINK answers: No such process")
}

impl Drop for NetnsNet {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_route_on_heal_is_ignored() {
        assert!(is_missing_route(
            "`ip -n x route del blackhole 10.0.0.1/32` failed: RTNETLINK answers: No such process"
        ));
        assert!(!is_missing_route(
            "`ip -n x route del blackhole 10.0.0.1/32` failed: Cannot open network namespace \"x\""
        ));
    }

    /// Needs root (network namespaces), like the partition fault run.
    #[test]
    fn healing_an_uncut_link_is_fine_and_a_failed_cut_panics() {
        let net = NetnsNet::create(2).unwrap_or_else(|e| panic!("needs root: {e}"));
        net.heal(1, 2);
        net.cut(1, 2);
        net.heal(1, 2);
        net.heal_all();
        // Node 3 has no namespace: the command fails and must not pass silently.
        let r = std::panic::catch_unwind(|| net.cut(1, 3));
        let msg = r
            .expect_err("a failed cut must panic")
            .downcast::<String>()
            .map(|m| *m)
            .unwrap_or_default();
        assert!(msg.contains("route replace blackhole"), "{msg}");
    }
}
