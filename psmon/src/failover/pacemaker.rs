//! The Pacemaker driver: asks the cluster to run the resource elsewhere
//! and watches `crm_mon --output-as=xml` until it does.
//!
//! - `move`: `crm_resource --resource R --move` (Pacemaker bans R from the
//!   node it runs on: constraint `cli-ban-R-on-NODE`); when R runs nowhere,
//!   `--ban --node THIS` instead.
//! - `ban`: `crm_resource --resource R --ban --node THIS`.
//! - `fail`: `crm_resource --resource R --fail --node THIS`: a failure of R
//!   here, so R's own `migration-threshold` decides whether it moves.
//!
//! Success is read from the cluster's status, never from exit codes:
//! R's role is Started on a node that is not this one. The status is
//! polled every 100 ms rather than with `crm_resource --wait`, which
//! sleeps seconds between its own looks.

use std::time::{Duration, Instant};

use super::{Step, hostname, retrying, tool};
use crate::config::FailoverMode;
use crate::facts::{Constraint, SwitchRequest};

/// Between looks at the cluster's status while the resource moves.
const POLL: Duration = Duration::from_millis(100);

/// The cluster as `crm_mon` shows it, for one resource.
#[derive(Debug, Default, PartialEq)]
pub struct Status {
    /// The cluster's nodes.
    pub nodes: Vec<Node>,
    /// Where the resource is, if the cluster knows it.
    pub resource: Option<Placement>,
    /// Every resource (and group) the cluster knows, for messages.
    pub known: Vec<String>,
}

/// One node of the cluster.
#[derive(Debug, PartialEq)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// It is online.
    pub online: bool,
    /// It is in standby.
    pub standby: bool,
}

/// Where a resource is.
#[derive(Debug, PartialEq)]
pub struct Placement {
    /// `Started`, `Stopped`, …
    pub role: String,
    /// The nodes it is active on.
    pub nodes: Vec<String>,
    /// It has failed.
    pub failed: bool,
}

impl Placement {
    /// The node other than `this` that it is Started on.
    fn started_elsewhere(&self, this: &str) -> Option<&str> {
        (self.role == "Started")
            .then(|| self.nodes.iter().find(|n| *n != this))
            .flatten()
            .map(String::as_str)
    }

    fn describe(&self) -> String {
        match (self.nodes.is_empty(), self.failed) {
            (true, _) => self.role.clone(),
            (false, false) => format!("{} on {}", self.role, self.nodes.join(", ")),
            (false, true) => format!("{} (failed) on {}", self.role, self.nodes.join(", ")),
        }
    }
}

/// Parses `crm_mon -1 --output-as=xml`; an error status (no cluster) is
/// `Err` with the tool's own words.
pub fn parse_status(xml: &str, resource: &str) -> Result<Status, String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| format!("crm_mon's answer is not XML ({e})"))?;
    let root = doc.root_element();
    if let Some(status) = root.children().find(|n| n.has_tag_name("status"))
        && status.attribute("code") != Some("0")
    {
        let errors: Vec<&str> = status
            .descendants()
            .filter(|n| n.has_tag_name("error"))
            .filter_map(|n| n.text())
            .collect();
        let message = status.attribute("message").unwrap_or("error");
        return Err(if errors.is_empty() {
            format!("no cluster: crm_mon: {message}")
        } else {
            format!("no cluster: crm_mon: {message} ({})", errors.join("; "))
        });
    }
    let mut out = Status::default();
    let flag = |n: roxmltree::Node, a: &str| n.attribute(a) == Some("true");
    if let Some(nodes) = root.children().find(|n| n.has_tag_name("nodes")) {
        for n in nodes.children().filter(|n| n.has_tag_name("node")) {
            out.nodes.push(Node {
                name: n.attribute("name").unwrap_or_default().to_string(),
                online: flag(n, "online"),
                standby: flag(n, "standby"),
            });
        }
    }
    let Some(resources) = root.children().find(|n| n.has_tag_name("resources")) else {
        return Ok(out);
    };
    for r in resources.descendants().filter(|n| {
        n.is_element() && ["resource", "group", "clone", "bundle"].contains(&n.tag_name().name())
    }) {
        let id = r.attribute("id").unwrap_or_default();
        out.known.push(id.to_string());
        if id != resource || out.resource.is_some() {
            continue;
        }
        // A group runs where its members run; it is Started when they all are.
        let members: Vec<roxmltree::Node> = if r.has_tag_name("resource") {
            vec![r]
        } else {
            r.descendants()
                .filter(|n| n.has_tag_name("resource"))
                .collect()
        };
        let all_started = !members.is_empty()
            && members
                .iter()
                .all(|m| m.attribute("role") == Some("Started"));
        let mut nodes: Vec<String> = Vec::new();
        for m in &members {
            for n in m.children().filter(|n| n.has_tag_name("node")) {
                let name = n.attribute("name").unwrap_or_default().to_string();
                if !nodes.contains(&name) {
                    nodes.push(name);
                }
            }
        }
        out.resource = Some(Placement {
            role: if r.has_tag_name("resource") {
                r.attribute("role").unwrap_or("Unknown").to_string()
            } else if all_started {
                "Started".into()
            } else {
                "Stopped".into()
            },
            nodes,
            failed: members.iter().any(|m| flag(*m, "failed")),
        });
    }
    Ok(out)
}

/// Location constraints psmon's kind of request leaves (`cli-…`) on
/// `resource`, from `cibadmin -Q -o constraints`.
pub fn parse_constraints(xml: &str, resource: &str) -> Vec<Constraint> {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return Vec::new();
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("rsc_location"))
        .filter(|n| n.attribute("rsc") == Some(resource))
        .filter_map(|n| {
            let id = n.attribute("id")?;
            id.starts_with("cli-").then(|| Constraint {
                resource: resource.to_string(),
                id: id.to_string(),
                node: n.attribute("node").map(str::to_string),
            })
        })
        .collect()
}

async fn status(
    resource: &str,
    env: &[(String, String)],
    deadline: Instant,
) -> Result<Status, String> {
    let said = tool("crm_mon", &["-1", "--output-as=xml"], env, deadline).await?;
    // crm_mon answers in XML whatever its exit status; the XML says why.
    if said.stdout.trim().is_empty() && !said.ok {
        return Err(format!("no cluster: {}", said.complaint));
    }
    parse_status(&said.stdout, resource)
}

async fn constraints(
    resource: &str,
    env: &[(String, String)],
    deadline: Instant,
) -> Vec<Constraint> {
    match tool("cibadmin", &["-Q", "-o", "constraints"], env, deadline).await {
        Ok(said) if said.ok => parse_constraints(&said.stdout, resource),
        _ => Vec::new(),
    }
}

/// This node's name in the cluster (`crm_node -n`, else the host name).
async fn this_node(env: &[(String, String)], deadline: Instant) -> String {
    match tool("crm_node", &["-n"], env, deadline).await {
        Ok(said) if said.ok && !said.stdout.trim().is_empty() => said.stdout.trim().to_string(),
        _ => hostname(),
    }
}

/// What the request step found.
enum Sent {
    /// The request was taken; these `cli-` constraints were there before it.
    Now(Vec<Constraint>),
    /// The resource already runs on this other node: nothing to send.
    Already(String),
}

/// Moves `request.resource` off this node; `(ok, said, constraints made)`.
pub(super) async fn switch(
    request: &SwitchRequest,
    mode: FailoverMode,
    deadline: Instant,
) -> (bool, String, Vec<Constraint>) {
    let begun = Instant::now();
    let r = request.resource.as_str();
    let env = request.env.as_slice();
    let this = this_node(env, deadline).await;
    let this = this.as_str();
    let sent = retrying(request, deadline, || async move {
        let s = match status(r, env, deadline).await {
            Ok(s) => s,
            Err(e) => return Step::Retry(e),
        };
        let Some(p) = s.resource else {
            return Step::GiveUp(format!(
                "resource '{r}' is unknown to the cluster (it has: {}); set FAILOVER_RESOURCE in psagent.conf or failover_resource in the entry",
                if s.known.is_empty() { "no resources".to_string() } else { s.known.join(", ") }
            ));
        };
        if let Some(node) = p.started_elsewhere(this) {
            return Step::Done(Sent::Already(node.to_string()));
        }
        let others: Vec<&str> = s
            .nodes
            .iter()
            .filter(|n| n.online && !n.standby && n.name != this)
            .map(|n| n.name.as_str())
            .collect();
        if others.is_empty() {
            return Step::Retry(format!(
                "no other node is online to take resource '{r}' (this node: {this})"
            ));
        }
        let before = constraints(r, env, deadline).await;
        let here = p.nodes.iter().any(|n| n == this);
        let args: Vec<&str> = match mode {
            FailoverMode::Move if here => vec!["--resource", r, "--move"],
            FailoverMode::Move | FailoverMode::Ban => vec!["--resource", r, "--ban", "--node", this],
            FailoverMode::Fail => vec!["--resource", r, "--fail", "--node", this],
        };
        match tool("crm_resource", &args, env, deadline).await {
            Ok(said) if said.ok => Step::Done(Sent::Now(before)),
            Ok(said) => Step::Retry(said.complaint),
            Err(e) => Step::Retry(e),
        }
    })
    .await;
    let before = match sent {
        Err(why) => return (false, why, Vec::new()),
        Ok(Sent::Already(node)) => {
            return (
                true,
                format!("resource '{r}' already started on {node}; nothing sent"),
                Vec::new(),
            );
        }
        Ok(Sent::Now(before)) => before,
    };
    // Taken: from here on only waited for, never sent again.
    let mut last = String::from("no status yet");
    let moved = loop {
        match status(r, env, deadline).await {
            Ok(Status {
                resource: Some(p), ..
            }) => match p.started_elsewhere(this) {
                Some(node) => break Some(node.to_string()),
                None => last = p.describe(),
            },
            Ok(_) => last = "the resource is gone from the cluster".into(),
            Err(e) => last = e,
        }
        if Instant::now() + POLL >= deadline {
            break None;
        }
        tokio::time::sleep(POLL).await;
    };
    let made: Vec<Constraint> = constraints(r, env, Instant::now() + Duration::from_secs(10))
        .await
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    match moved {
        Some(node) => (
            true,
            format!(
                "resource '{r}' started on {node} in {:.2} s",
                begun.elapsed().as_secs_f64()
            ),
            made,
        ),
        None => (
            false,
            format!(
                "request taken, but resource '{r}' was not started on another node within {} s (FAILOVER_TIMEOUT); last seen: {last}",
                request.timeout.as_secs()
            ),
            made,
        ),
    }
}

/// Removes the constraints a request left on `resource`
/// (`crm_resource --clear`); `Err` says why not.
pub async fn clear(resource: &str, env: &[(String, String)]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let said = tool(
        "crm_resource",
        &["--resource", resource, "--clear"],
        env,
        deadline,
    )
    .await?;
    if said.ok { Ok(()) } else { Err(said.complaint) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = r#"<pacemaker-result api-version="2.25" request="crm_mon -1 --output-as=xml">
  <nodes>
    <node name="node1" id="1" online="true" standby="false"/>
    <node name="node2" id="2" online="true" standby="false"/>
  </nodes>
  <resources>
    <resource id="R" resource_agent="ocf:pacemaker:Dummy" role="Started" active="true" failed="false" nodes_running_on="1">
      <node name="node1" id="1" cached="true"/>
    </resource>
    <group id="G" number_resources="2">
      <resource id="G1" role="Started" failed="false"><node name="node2" id="2"/></resource>
      <resource id="G2" role="Started" failed="false"><node name="node2" id="2"/></resource>
    </group>
  </resources>
  <status code="0" message="OK"/>
</pacemaker-result>"#;

    #[test]
    fn reads_nodes_and_where_a_resource_runs() {
        let s = parse_status(RUNNING, "R").unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert!(s.nodes[1].online && !s.nodes[1].standby);
        let p = s.resource.unwrap();
        assert_eq!(
            (p.role.as_str(), p.nodes.clone()),
            ("Started", vec!["node1".to_string()])
        );
        assert_eq!(p.started_elsewhere("node1"), None);
        assert_eq!(p.started_elsewhere("node2"), Some("node1"));
        assert_eq!(s.known, ["R", "G", "G1", "G2"]);
    }

    #[test]
    fn a_group_runs_where_its_members_run() {
        let p = parse_status(RUNNING, "G").unwrap().resource.unwrap();
        assert_eq!(p.role, "Started");
        assert_eq!(p.nodes, ["node2"]);
        assert_eq!(parse_status(RUNNING, "nothing").unwrap().resource, None);
    }

    #[test]
    fn no_cluster_is_an_error_in_crm_mons_words() {
        let xml = r#"<pacemaker-result api-version="2.25" request="crm_mon -1 --output-as=xml">
  <status code="102" message="Not connected">
    <errors>
      <error>crm_mon: Connection to cluster failed: Connection refused</error>
    </errors>
  </status>
</pacemaker-result>"#;
        let e = parse_status(xml, "R").unwrap_err();
        assert_eq!(
            e,
            "no cluster: crm_mon: Not connected (crm_mon: Connection to cluster failed: Connection refused)"
        );
        assert!(parse_status("not xml", "R").is_err());
    }

    #[test]
    fn finds_the_cli_constraints_of_a_resource() {
        let xml = r#"<constraints>
  <rsc_location id="cli-ban-R-on-node1" rsc="R" role="Started" node="node1" score="-INFINITY"/>
  <rsc_location id="keep-R" rsc="R" node="node2" score="100"/>
  <rsc_location id="cli-prefer-S" rsc="S" node="node2" score="INFINITY"/>
</constraints>"#;
        assert_eq!(
            parse_constraints(xml, "R"),
            [Constraint {
                resource: "R".into(),
                id: "cli-ban-R-on-node1".into(),
                node: Some("node1".into()),
            }]
        );
    }
}
