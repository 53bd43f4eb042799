//! The hosts: one network namespace per member, joined to a bridge in the root namespace by a
//! veth pair, on a private subnet the harness assigns. Every name starts with [`PREFIX`] so
//! that leftovers of a crashed run can be found and removed before the next one.
//!
//! Faults on the network live inside the members' namespaces: a partition is an nftables
//! table (`inet keeljepsen`) dropping packets from the cut-off peers; netem is a `tc` qdisc on
//! the member's end of its veth pair. Clients run in the root namespace and reach every member
//! over the bridge, so no partition cuts a client off.
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::HarnessError;

/// Prefix of every namespace and link the harness creates.
pub const PREFIX: &str = "kjep";
/// The bridge in the root namespace.
pub const BRIDGE: &str = "kjep-br";
/// The nftables table of the partition nemesis (inside member namespaces only).
const NFT_TABLE: &str = "keeljepsen";
/// The nftables table of the netem nemesis's packet loss, where the kernel has no netem.
const NFT_LOSS: &str = "keeljepsenloss";
/// The subnet's first three octets: members are `.11`, `.12`, ...; the bridge is `.1`.
const SUBNET: [u8; 3] = [10, 213, 77];

/// Runs a command; an error names it with its standard error.
pub fn run(program: &str, args: &[&str]) -> Result<(), HarnessError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::Command {
            command: format!("{program} {}", args.join(" ")),
            why: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(HarnessError::Command {
        command: format!("{program} {}", args.join(" ")),
        why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs a command for its standard output (empty on any failure).
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether member `i`'s namespace holds the nftables table `inet NAME`.
fn has_table(i: usize, name: &str) -> bool {
    let listed = output("ip", &["netns", "exec", &netns(i), "nft", "list", "tables"]);
    let want = format!("table inet {name}");
    listed.lines().any(|l| l.trim() == want)
}

/// Runs `program args` inside namespace `ns`.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<(), HarnessError> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// The address of the bridge (the clients' side).
pub fn bridge_addr() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
}

/// The address of member `i` (0-based).
pub fn member_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 11 + i as u8)
}

/// The namespace of member `i`.
pub fn netns(i: usize) -> String {
    format!("{PREFIX}-n{}", i + 1)
}

/// The member's end of its veth pair (inside its namespace).
pub fn inner_link(i: usize) -> String {
    format!("{PREFIX}-i{}", i + 1)
}

fn outer_link(i: usize) -> String {
    format!("{PREFIX}-o{}", i + 1)
}

/// The namespaces of the hosts; dropping it tears them down.
pub struct Hosts {
    /// Number of members.
    pub n: usize,
}

impl Hosts {
    /// Removes leftovers, then creates the bridge and `n` namespaces with their links.
    pub fn create(n: usize) -> Result<Hosts, HarnessError> {
        if !is_root() {
            return Err(HarnessError::NotRoot);
        }
        cleanup_leftovers();
        let hosts = Hosts { n };
        let bridge = format!("{}/24", bridge_addr());
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["addr", "add", &bridge, "dev", BRIDGE])?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        for i in 0..n {
            hosts.create_host(i)?;
        }
        Ok(hosts)
    }

    fn create_host(&self, i: usize) -> Result<(), HarnessError> {
        let (ns, inner, outer) = (netns(i), inner_link(i), outer_link(i));
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ],
        )?;
        run("ip", &["link", "set", &inner, "netns", &ns])?;
        run("ip", &["link", "set", &outer, "master", BRIDGE])?;
        run("ip", &["link", "set", &outer, "up"])?;
        let addr = format!("{}/24", member_addr(i));
        run_in(&ns, "ip", &["addr", "add", &addr, "dev", &inner])?;
        run_in(&ns, "ip", &["link", "set", &inner, "up"])?;
        run_in(&ns, "ip", &["link", "set", "lo", "up"])
    }

    /// Cuts member `i` off from `peers`: packets from their addresses are dropped in `i`'s
    /// namespace (the caller makes the grudge symmetric).
    pub fn drop_from(&self, i: usize, peers: &[usize]) -> Result<(), HarnessError> {
        if peers.is_empty() {
            return Ok(());
        }
        let addrs: Vec<String> = peers.iter().map(|p| member_addr(*p).to_string()).collect();
        let rules = format!(
            "table inet {NFT_TABLE} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {{ {} }} drop\n }}\n}}\n",
            addrs.join(", ")
        );
        self.nft(i, &rules)
    }

    /// Loads an nftables ruleset into member `i`'s namespace.
    fn nft(&self, i: usize, rules: &str) -> Result<(), HarnessError> {
        let file = std::env::temp_dir().join(format!("{PREFIX}-nft-{}-{}", std::process::id(), i));
        std::fs::write(&file, rules).map_err(|e| HarnessError::Io {
            what: file.display().to_string(),
            why: e.to_string(),
        })?;
        let path = file.display().to_string();
        let result = run_in(&netns(i), "nft", &["-f", &path]);
        let _ = std::fs::remove_file(&file);
        result
    }

    /// Removes every partition rule of member `i`.
    pub fn heal_partition(&self, i: usize) -> Result<(), HarnessError> {
        if has_table(i, NFT_TABLE) {
            run_in(&netns(i), "nft", &["delete", "table", "inet", NFT_TABLE])?;
        }
        Ok(())
    }

    /// Delay, loss and reordering on member `i`'s link (`tc netem` arguments). Kernels
    /// without the netem qdisc (`sch_netem`) get the loss part only, as an nftables rule
    /// dropping `loss_percent` of the packets that reach the member. Returns what was done.
    pub fn netem(
        &self,
        i: usize,
        spec: &[&str],
        loss_percent: u64,
    ) -> Result<String, HarnessError> {
        let link = inner_link(i);
        let mut args = vec!["qdisc", "replace", "dev", &link, "root", "netem"];
        args.extend_from_slice(spec);
        match run_in(&netns(i), "tc", &args) {
            Ok(()) => Ok(format!("netem {}", spec.join(" "))),
            Err(HarnessError::Command { why, .. }) if why.contains("qdisc kind is unknown") => {
                let rules = format!(
                    "table inet {NFT_LOSS} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  numgen random mod 100 < {loss_percent} drop\n }}\n}}\n"
                );
                self.nft(i, &rules)?;
                Ok(format!(
                    "loss {loss_percent}% by nftables (no netem qdisc in this kernel)"
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Removes member `i`'s netem qdisc or loss rule, if any.
    pub fn heal_netem(&self, i: usize) -> Result<(), HarnessError> {
        let link = inner_link(i);
        let shown = output(
            "ip",
            &[
                "netns",
                "exec",
                &netns(i),
                "tc",
                "qdisc",
                "show",
                "dev",
                &link,
            ],
        );
        if shown.contains("netem") {
            run_in(&netns(i), "tc", &["qdisc", "del", "dev", &link, "root"])?;
        }
        if has_table(i, NFT_LOSS) {
            run_in(&netns(i), "nft", &["delete", "table", "inet", NFT_LOSS])?;
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        cleanup_leftovers();
    }
}

/// Whether this process runs as root (namespaces, links and nftables need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Kills every process left in a harness namespace, deletes the namespaces, the bridge and any
/// veth end left in the root namespace. Safe to call at any time; errors are ignored (the
/// thing is already gone).
pub fn cleanup_leftovers() {
    for ns in output("ip", &["netns", "list"]).lines() {
        let name = ns.split_whitespace().next().unwrap_or("");
        if !name.starts_with(&format!("{PREFIX}-")) {
            continue;
        }
        for pid in output("ip", &["netns", "pids", name]).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) with a pid read from the namespace; an error means it is gone.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = run("ip", &["netns", "delete", name]);
    }
    for line in output("ip", &["-o", "link", "show"]).lines() {
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(&format!("{PREFIX}-")) {
            let _ = run("ip", &["link", "delete", name]);
        }
    }
}
