//! `rdb-cli namespace create|list` (specs/018-versions).

use rdb_client::{Client, NamespaceMode};
use serde_json::json;

use crate::cli::{ModeArg, NamespaceCmd};
use crate::fail;
use crate::output::{header, print_table, Printer};

/// Runs a `namespace` command; returns the exit code.
pub(crate) async fn run(client: &Client, cmd: NamespaceCmd, p: &Printer) -> u8 {
    match cmd {
        NamespaceCmd::Create { name, mode } => {
            let mode = match mode {
                ModeArg::Strong => NamespaceMode::Strong,
                ModeArg::Eventual => NamespaceMode::Eventual,
            };
            match client.create_namespace(&name, mode).await {
                Ok(created) => {
                    if p.is_json() {
                        outln!(
                            "{}",
                            json!({"op": "namespace create", "name": name,
                                   "mode": mode.as_str(), "created": created})
                        );
                    } else if created {
                        outln!("OK (namespace {name}, {})", mode.as_str());
                    } else {
                        outln!("OK (namespace {name} exists, {})", mode.as_str());
                    }
                    0
                }
                Err(e) => fail(&e),
            }
        }
        NamespaceCmd::List => match client.namespaces().await {
            Ok(list) => {
                let all = std::iter::once(("default".to_string(), NamespaceMode::Strong))
                    .chain(list)
                    .collect::<Vec<_>>();
                if p.is_json() {
                    let rows: Vec<_> = all
                        .iter()
                        .map(|(n, m)| json!({"name": n, "mode": m.as_str()}))
                        .collect();
                    outln!("{}", serde_json::Value::Array(rows));
                } else {
                    let mut rows = vec![header(&["NAME", "MODE"])];
                    rows.extend(
                        all.iter()
                            .map(|(n, m)| vec![n.clone(), m.as_str().to_string()]),
                    );
                    print_table(&rows);
                }
                0
            }
            Err(e) => fail(&e),
        },
    }
}
