//! A node of a config-file cluster (`rdb-server --config FILE --node-id N`, `--join`, or no
//! arguments): a store that hosts region 1, every key, with no PD. Its store id is its node
//! id, and so is its peer id in region 1, whose peers start as the file's nodes and then follow
//! the log (membership changes through `rdb-cli member`). Where the other nodes are comes from
//! the file and the member records region 1 keeps with its data (see [`Directory`]) instead of
//! PD; nothing splits. A node joining a running cluster hosts nothing at first: its leader's
//! first message creates region 1 here, and a snapshot brings its data.

use super::*;
use crate::members::Directory;
use crate::node::Transport as _;

/// The region a config-file cluster is.
pub const CONFIG_REGION: u64 = FIRST_REGION_ID;

/// The cluster a config-file node belongs to, as its task needs it.
pub(in crate::store) struct StaticCluster {
    /// The cluster file (or the joined cluster's view of it).
    pub(in crate::store) config: Arc<ClusterConfig>,
    /// Members' addresses as region 1 applied them, shared with the services.
    pub(in crate::store) members: SharedDirectory,
}

impl StaticCluster {
    /// Opens the transport's streams to every other member and records their client
    /// addresses (leader hints): at start, and after each membership change.
    pub(in crate::store) fn connect(
        &self,
        me: u64,
        transport: &mut GrpcTransport,
        addrs: &Mutex<HashMap<u64, String>>,
    ) {
        let d = self.members.read();
        transport.set_peers(&d.peers_of(me));
        let mut a = lock(addrs);
        a.clear();
        a.extend(d.members.iter().map(|(&id, m)| (id, m.client_addr.clone())));
    }

    /// Reads the member records again from region 1's view `view` (after its membership
    /// changed).
    pub(in crate::store) fn reload(&self, view: &Engine) -> Result<(), rdb_storage::Error> {
        self.members.replace(Directory::load(view, &self.config)?);
        Ok(())
    }

    /// What stands in for PD's answer about region 1 when a leader's message names it here
    /// before this node hosts it (a joining node): region 1 has this node's peer.
    pub(in crate::store) fn vouch(me: u64) -> Region {
        rdb_storage::region::whole_range_region(CONFIG_REGION, &[me])
    }
}

/// Runs node `node_id` of `config` until `shutdown` resolves or a listener fails.
pub async fn run_config_node(
    config: ClusterConfig,
    node_id: u64,
    logger: Logger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let logger = logger.new(o!("node" => node_id));
    config.validate()?;
    let config = Arc::new(config);
    let me = config.node(node_id)?.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let settings = &config.settings;
    let data_error = |e: rdb_storage::Error| ServerError::DataDir {
        dir: me.data_dir.clone(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&me.data_dir).map_err(|e| ServerError::DataDir {
        dir: me.data_dir.clone(),
        message: e.to_string(),
    })?;
    let engine = Engine::open_with(&me.data_dir, settings.engine_options()).map_err(data_error)?;
    let ident = rdb_storage::Ident {
        cluster_id: config.cluster_id,
        node_id,
    };
    engine.claim_for_node(ident).map_err(data_error)?;
    crate::server::refuse_removed(&engine, &me.data_dir, node_id, config.cluster_id)?;
    let dedup_window = settings.dedup_window;
    if engine
        .check_apply_settings(settings.apply_settings(), rdb_storage::Revisions::Counted)
        .map_err(data_error)?
    {
        info!(logger, "recorded apply settings";
            "dedup_window" => dedup_window, "history_revisions" => settings.history_revisions);
    }
    // A node of the file's cluster starts region 1 as the file says, once; a joining node gets
    // it from its leader.
    let hosted = engine
        .region_ids()
        .map_err(data_error)?
        .contains(&CONFIG_REGION);
    if !config.joining && !hosted {
        let nodes: Vec<u64> = config.nodes.iter().map(|n| n.id).collect();
        let region = rdb_storage::region::whole_range_region(CONFIG_REGION, &nodes);
        engine
            .create_region_with_members(&region, &crate::server::member_records(&config))
            .map_err(data_error)?;
        info!(logger, "created region 1 from the cluster file"; "nodes" => ?nodes);
    }
    let core = StoreCore::open(
        engine.clone(),
        node_id,
        crate::node::core_config(node_id, settings),
        dedup_window,
        &logger,
    )
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    // Behind what this node recorded as durable: the directory was rolled back.
    engine
        .check_region_durable_indexes(&core.log_ends())
        .map_err(data_error)?;
    let view = engine.region(CONFIG_REGION).map_err(data_error)?;
    let members = SharedDirectory::new(Directory::load(&view, &config).map_err(data_error)?);

    // Bind before anything runs, so a taken port is a clear start-up error.
    let (client_listener, peer_listener) = crate::server::bind_listeners(
        &me.client_addr,
        &me.peer_addr,
        me.metrics_addr.as_deref(),
        &logger,
    )
    .await?;
    let (client_tls, peer_tls) =
        crate::tls::port_configs(config.tls.as_ref(), config.peer_tls.as_ref(), node_id)?;
    let started = Launch {
        store_id: node_id,
        cluster_id: config.cluster_id,
        settings: settings.clone(),
        engine,
        core,
        addr: me.client_addr.clone(),
        client_listener,
        peer_listener,
        client_tls,
        peer_tls,
        link: Link::Static(StaticCluster {
            config: config.clone(),
            members,
        }),
        logger,
    };
    launch(started, stop_rx).await
}

/// What a store task does differently as a config-file node.
impl StoreTask {
    /// The store's status. A config-file node's is region 1's, as a node of one group
    /// reports it (a joining node that hosts nothing yet reports no leader); a store's lists
    /// every region it hosts.
    pub(super) fn status(&self) -> NodeStatus {
        let node_id = self.core.store_id();
        if self.statics.is_none() {
            return NodeStatus {
                node_id,
                regions: Some(self.core.region_states()),
                ..Default::default()
            };
        }
        let Some(core) = self.core.core(config_node::CONFIG_REGION) else {
            return NodeStatus {
                node_id,
                ..Default::default()
            };
        };
        let r = core.replica();
        let leader_addr = lock(&self.addrs)
            .get(&r.leader_id())
            .cloned()
            .unwrap_or_default();
        crate::node::group_status(node_id, r, leader_addr)
    }

    /// A config-file node's checks of a membership change before it is proposed: a removed
    /// id never comes back, and a new node's addresses are its own. Each node added is the
    /// store of its own id.
    pub(super) fn check_node_change(
        &self,
        steps: &[crate::raft_core::MemberStep],
        added: &mut [rdb_storage::MemberRecord],
    ) -> Result<(), RequestError> {
        let Some(cluster) = &self.statics else {
            return Ok(());
        };
        let reused = steps
            .iter()
            .map(|s| s.id())
            .find(|&id| cluster.members.is_removed(id));
        if let Some(id) = reused {
            return Err(RequestError::InvalidArgument(format!(
                "node id {id} was removed from this cluster and cannot be used again"
            )));
        }
        let dir = cluster.members.read();
        if let Some(why) = added.iter().find_map(|r| dir.clash(r)) {
            return Err(RequestError::InvalidArgument(why));
        }
        for r in added.iter_mut() {
            if r.peer_addr.is_empty() {
                return Err(RequestError::InvalidArgument(format!(
                    "node {}: a node of a config-file cluster is added with its peer and client \
                     addresses",
                    r.id
                )));
            }
            r.store_id = r.id;
        }
        Ok(())
    }

    /// A config-file node's region changed members: read their addresses again and open or
    /// close the streams to them. A failure to read its own records ends the node.
    pub(super) fn reload_members(&mut self, region: u64) {
        let Some(cluster) = &self.statics else {
            return;
        };
        let Some(view) = self.core.region_engine(region) else {
            return;
        };
        if let Err(e) = cluster.reload(&view) {
            crit!(self.logger, "cannot read the member records"; "error" => %e);
            crate::logging::fatal_exit(&format!("cannot read the member records: {e}"));
        }
        cluster.connect(self.core.store_id(), &mut self.transport, &self.addrs);
    }

    /// This config-file node is no longer a member: record it (so a restart refuses to serve)
    /// and stop.
    pub(super) fn stop_removed(&self, how: &str) -> ! {
        let index = self
            .core
            .core(config_node::CONFIG_REGION)
            .map_or(0, |c| c.replica().applied_index());
        if let Err(e) = self.core.engine().mark_removed(index) {
            warn!(self.logger, "cannot record the removal"; "error" => %e);
        }
        crit!(self.logger, "this node was removed from the cluster; stopping"; "how" => how,
            "index" => index);
        crate::logging::fatal_exit(&format!(
            "node {} was removed from the cluster ({how}); it will not serve again",
            self.core.store_id()
        ))
    }
}
