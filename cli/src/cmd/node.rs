//! `gpumesh init`, `gpumesh node`, `gpumesh gpus`.

use crate::cli::NodeArgs;
use crate::table::Table;
use anyhow::{Context, Result, bail};
use gpumesh_node::config::{LogFormat, NodeConfig};
use gpumesh_node::{DataDir, inventory};

pub fn init(data_dir: &DataDir, network: &str, force: bool) -> Result<i32> {
    let id = data_dir.init(network, force)?;
    println!("{id}");
    eprintln!(
        "initialised {} (network {network}); start the node with `gpumesh --data-dir {} node`",
        data_dir.root().display(),
        data_dir.root().display()
    );
    Ok(0)
}

/// The config file merged with the flags (flags win).
pub fn node_config(data_dir: &DataDir, api: Option<&str>, args: &NodeArgs) -> Result<NodeConfig> {
    let path = args.config.clone().unwrap_or_else(|| data_dir.config_path());
    if args.config.is_some() && !path.exists() {
        bail!("config file {} does not exist", path.display());
    }
    let mut c = NodeConfig::load(&path)?;
    if !args.listen.is_empty() {
        c.listen = args.listen.clone();
    }
    if !args.bootstrap.is_empty() {
        c.bootstrap = args.bootstrap.clone();
    }
    if let Some(a) = api {
        c.api = a.to_string();
    }
    if let Some(n) = &args.network {
        c.network = n.clone();
    }
    if let Some(s) = &args.simulate_gpus {
        c.simulate_gpus = Some(s.clone());
    }
    if let Some(p) = &args.price {
        c.price = Some(p.clone());
    }
    if let Some(r) = &args.region {
        c.region = r.clone();
    }
    if let Some(t) = &args.offer_ttl {
        c.offer_ttl = t.clone();
    }
    if args.no_mdns {
        c.mdns = false;
    }
    if let Some(f) = &args.log_format {
        c.log_format = f.clone();
    }
    Ok(c)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn,libp2p_gossipsub=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub async fn node(data_dir: &DataDir, api: Option<&str>, args: NodeArgs) -> Result<i32> {
    let config = node_config(data_dir, api, &args)?;
    let settings = config.resolve()?;
    init_logging(settings.log_format);
    let watch_parent = args.exit_with_parent;
    let shutdown = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let parent_gone = async {
            if !watch_parent {
                return std::future::pending().await;
            }
            let parent = std::os::unix::process::parent_id();
            // When the parent dies the node is re-parented; nothing is lost by polling.
            while std::os::unix::process::parent_id() == parent {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = parent_gone => tracing::info!("parent process gone"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    gpumesh_node::run(data_dir.clone(), config, shutdown).await.context("the node stopped with an error")?;
    Ok(0)
}

pub fn gpus(data_dir: &DataDir, simulate: Option<String>, json: bool) -> Result<i32> {
    let (gpus, notes) = match simulate.filter(|s| !s.trim().is_empty()) {
        Some(spec) => {
            // Simulated uuids depend on the node key when there is one, as in the node.
            let seed = data_dir.load_key().map(|k| k.verifying_key().to_bytes().to_vec()).unwrap_or_default();
            (inventory::simulate(&spec, &seed)?, vec!["simulated".to_string()])
        }
        None => {
            let inv = inventory::detect();
            (inv.gpus, inv.notes)
        }
    };
    if json {
        super::print_json(&gpus)?;
        if gpus.is_empty() {
            // Why nothing was found (no NVML, no nvidia-smi, …), where a script reading the
            // JSON on stdout still sees an empty list.
            for n in notes {
                eprintln!("{n}");
            }
        }
        return Ok(0);
    }
    if gpus.is_empty() {
        println!("no GPUs found");
        for n in notes {
            println!("  {n}");
        }
        return Ok(0);
    }
    let mut t = Table::new(&["INDEX", "MODEL", ">VRAM_MIB", "CC", "INTERCONNECT", "SOURCE", "UUID"]);
    for g in &gpus {
        t.row(vec![
            g.index.to_string(),
            g.model.clone(),
            g.vram_mib.to_string(),
            g.compute_capability.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            g.interconnect.to_string(),
            g.source.as_str().into(),
            g.uuid.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(0)
}
