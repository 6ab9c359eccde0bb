//! The `kneenode` command: parses the command line, loads the configuration once and wires the
//! services together. Each verb's work lives in the library; this file only dispatches.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kneenode::config::{Config, Overrides};
use kneenode::db::Db;
use kneenode::dicom::dispatch::Dispatcher;
use kneenode::dicom::routing::Router;
use kneenode::dicom::scp::{Scp, ScpStats};
use kneenode::dicom::scu::{self, Peer, Timeouts};
use kneenode::dicom::series::SeriesWatcher;
use kneenode::dicom::store::Store;
use kneenode::jobs::Queue;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "kneenode",
    version,
    about = "A DICOM node for knee-MRI analysis"
)]
struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, global = true, env = "KNEENODE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags that override the configuration (the highest layer).
#[derive(Args)]
struct OverrideArgs {
    /// Override node.ae_title.
    #[arg(long, global = true, value_name = "AE")]
    ae_title: Option<String>,
    /// Override node.port (the DICOM port).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Override storage.dir.
    #[arg(long, global = true, value_name = "DIR")]
    storage_dir: Option<PathBuf>,
    /// Override database.url (postgres://… or sqlite://…).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Override portal.port.
    #[arg(long, global = true)]
    portal_port: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: DICOM SCP, series watcher, workers, dispatcher and job-lease sweeper.
    Serve {
        /// Do not start worker supervisors in this process (run `kneenode worker` separately).
        #[arg(long)]
        no_workers: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Delete received series and job folders older than storage.retention_days (serve does
    /// this hourly); never results that are not yet complete and dispatched.
    Cleanup {
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the installation: libtorch, CUDA, database, storage, ports, models.
    Doctor,
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Benchmarks that print figures against a reference run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run only the DICOM SCP (receives and stores instances; no workers).
    Scp,
    /// Run worker supervisors only (no SCP): one per device, claiming jobs from the database.
    Worker(WorkerArgs),
    /// Run only the web portal (and the internal API, /healthz, /metrics), no SCP or workers.
    Portal,
    /// Segment one NIfTI / NRRD file or DICOM folder and write the label volume.
    Run(RunArgs),
    /// Internal: run one job whose folder holds job.json (the supervisor starts this).
    RunJob {
        /// The job's folder.
        #[arg(long)]
        job_dir: PathBuf,
    },
    /// Manage portal users: add, passwd, disable, enable, list.
    #[command(subcommand)]
    User(kneenode::portal::auth::cli::UserCommand),
    /// C-ECHO a DICOM peer: `kneenode echo PACS@10.0.0.5:104`.
    Echo {
        /// The peer as AE@host:port.
        peer: String,
    },
    /// C-STORE DICOM files to a configured destination (or AE@host:port).
    Send {
        /// Files to send.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A `[[destinations]]` name, or AE@host:port.
        #[arg(long)]
        to: String,
    },
    /// Write a synthetic knee MR phantom: a DICOM series, the image and its labels as NIfTI.
    Phantom(PhantomArgs),
}

/// Options of `kneenode run`.
#[derive(Args)]
struct RunArgs {
    /// A NIfTI (.nii, .nii.gz) or NRRD file, or a folder holding one DICOM series.
    #[arg(required_unless_present = "labels", conflicts_with = "labels")]
    input: Option<PathBuf>,
    /// Analyse an existing segmentation instead (NIfTI or NRRD label volume): meshes and
    /// thickness only, no model.
    #[arg(long, value_name = "LABELS")]
    labels: Option<PathBuf>,
    /// Which integer is which tissue in --labels (`[labels] femur = 5 …`); default: the
    /// kneenode label map.
    #[arg(long, value_name = "MAP.toml", requires = "labels")]
    label_map: Option<PathBuf>,
    /// Output folder (created).
    #[arg(long)]
    out: PathBuf,
    /// Segmentation model from the registry (default: the registry's default).
    #[arg(long)]
    model: Option<String>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Mirroring test-time augmentation (slower, sometimes better).
    #[arg(long)]
    tta: bool,
    /// For a multi-echo DICOM series: the echo number, or `rss` (root sum of squares).
    #[arg(long)]
    echo: Option<String>,
    /// For a DICOM series of several orientations: sagittal, coronal or axial.
    #[arg(long)]
    plane: Option<String>,
    /// The knee's side, left or right (default: the DICOM series' laterality). A model trained
    /// on one side only mirrors a knee of the other side; with neither this nor a laterality
    /// (NIfTI, NRRD) the knee's position in the scanner decides, else the model's own side.
    #[arg(long, value_name = "left|right")]
    side: Option<kneenode::pipeline::models::Side>,
    /// Stop after the label files: no meshes, no thickness.
    #[arg(long)]
    segment_only: bool,
    /// Gaussian variance (mm²) before the cartilage surface is extracted, 0–2.
    #[arg(long, default_value_t = 0.3125)]
    cartilage_smoothing: f64,
    /// Fit the neural shape model after the meshes (the registry's NSM model, or --nsm-model):
    /// NSM_recon_*.vtk and NSM_recon_params.json with the latent and the BScore.
    #[arg(long, conflicts_with = "segment_only")]
    nsm: bool,
    /// Which NSM: bone_and_cart, bone_only or both.
    #[arg(long, default_value = "bone_and_cart", requires = "nsm")]
    nsm_type: String,
    /// NSM model from the registry (default: the registry's `nsm`, else its first NSM model).
    #[arg(long, requires = "nsm")]
    nsm_model: Option<String>,
    /// Grid points per axis of the NSM reconstruction (marching cubes of the SDF).
    #[arg(long, default_value_t = 256, requires = "nsm")]
    nsm_resolution: usize,
    /// Most Adam steps of the NSM latent fit (it stops earlier after 50 steps without gain).
    #[arg(long, default_value_t = 2000, requires = "nsm")]
    nsm_steps: usize,
}

impl RunArgs {
    /// The NSM stage these flags ask for.
    fn nsm_run(&self) -> anyhow::Result<Option<kneenode::pipeline::run::NsmRun>> {
        if !self.nsm {
            return Ok(None);
        }
        anyhow::ensure!(
            (8..=1024).contains(&self.nsm_resolution),
            "--nsm-resolution must be between 8 and 1024"
        );
        let nsm_type = serde_json::from_value(self.nsm_type.as_str().into())
            .context("--nsm-type must be bone_and_cart, bone_only or both")?;
        let mut options = kneenode::pipeline::nsm::NsmOptions {
            resolution: self.nsm_resolution,
            ..Default::default()
        };
        options.fit.max_steps = self.nsm_steps;
        Ok(Some(kneenode::pipeline::run::NsmRun {
            nsm_type,
            model: self.nsm_model.clone(),
            options,
        }))
    }
}

/// Prints what the NSM stage found and noted.
fn report_nsm(nsm: &kneenode::pipeline::run::NsmOutput) {
    for note in &nsm.notes {
        eprintln!("note: {note}");
    }
    for r in &nsm.results {
        let seconds: f64 = r.timings.iter().map(|(_, s)| s).sum();
        eprintln!(
            "NSM {} ({} v{}): BScore {}, ASSD femur {:.3} mm{}, {} steps, loss {:.5}, {seconds:.1} s",
            r.type_name(),
            r.model.0,
            r.model.1,
            r.bscore.map_or("n/a".into(), |b| format!("{b:.3}")),
            r.assd_bone_mm,
            r.assd_cartilage_mm
                .map_or(String::new(), |a| format!(", cartilage {a:.3} mm")),
            r.steps,
            r.final_loss,
        );
    }
}

/// Options of `kneenode worker`.
#[derive(Args)]
struct WorkerArgs {
    /// Device(s) to run on (repeatable): auto, cpu, cuda, cuda:N. Default: worker.devices.
    #[arg(long)]
    device: Vec<String>,
    /// The node's portal URL, for a worker on another host: inputs are fetched from and
    /// results uploaded to its internal API (storage is not shared).
    #[arg(long, requires = "token_file", value_name = "URL")]
    node_url: Option<String>,
    /// The node's internal API token (a copy of its portal.internal_token_file).
    #[arg(long, requires = "node_url", value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// Options of `kneenode phantom`.
#[derive(Args)]
struct PhantomArgs {
    /// Output folder (created): dicom/IM*.dcm, image.nii.gz, labels.nii.gz, labels.nrrd.
    #[arg(long)]
    out: PathBuf,
    /// Random seed: the same seed gives the same phantom, bit for bit.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A small, coarse phantom (64×64×48 at 2 mm) for quick tests.
    #[arg(long)]
    small: bool,
    /// Voxels along i, j, k as IxJxK, over the same field of view (so the voxel size changes):
    /// 384x384x160 is 0.375×0.375×0.75 mm; with --small, 128x128x96 is 1×1×1.25 mm.
    #[arg(long, value_name = "IxJxK", value_parser = kneenode::phantom::parse_matrix)]
    matrix: Option<[usize; 3]>,
    /// A left knee (default: right).
    #[arg(long)]
    left: bool,
    /// Cartilage thickness, mm.
    #[arg(long)]
    cartilage_mm: Option<f64>,
    /// No random rotation, shift or scale.
    #[arg(long)]
    no_pose: bool,
    /// Write the DICOM as one Enhanced MR instance (dicom/enhanced.dcm) instead of one file per
    /// slice.
    #[arg(long)]
    enhanced: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it, with secrets redacted.
    Check,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Queue throughput: claims/s and completions/s with 1, 4 and 8 workers.
    Queue(kneenode::bench::QueueBenchArgs),
    /// Marching cubes on one mask or field, timed (benches/mesh.sh compares it with skimage/VTK).
    Mesh(kneenode::bench::MeshBenchArgs),
    /// The NSM latent fit, timed on a fixed case (benches/nsm.sh compares it with PyTorch).
    Nsm(kneenode::bench::nsm::NsmBenchArgs),
}

fn main() -> ExitCode {
    kneenode::telemetry::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kneenode: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = || -> anyhow::Result<Config> {
        let o = &cli.overrides;
        let overrides = Overrides {
            ae_title: o.ae_title.clone(),
            port: o.port,
            storage_dir: o.storage_dir.clone(),
            database_url: o.database_url.clone(),
            portal_port: o.portal_port,
            devices: None,
        };
        Ok(Config::load(cli.config.as_deref(), &overrides)?)
    };
    match &cli.command {
        Command::Serve { no_workers } => {
            let cfg = config()?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(serve(
                cfg,
                Services {
                    sweeper: true,
                    no_workers: *no_workers,
                    portal: true,
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let cfg = config()?;
            let db = open_db(&cfg, 2)?;
            let ran = db.migrate()?;
            println!(
                "{ran} migration(s) applied to {} ({})",
                db.url_redacted(),
                db.kind().name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup { dry_run } => {
            let cfg = config()?;
            let db = open_db(&cfg, 2)?;
            db.migrate()?;
            let now = chrono::Utc::now().naive_utc();
            let plan =
                kneenode::retention::plan(&db, &cfg.storage.dir, cfg.storage.retention_days, now)?;
            println!("{plan}");
            if !*dry_run {
                let r = kneenode::retention::apply(&db, &plan)?;
                println!(
                    "removed {} series and {} job folder(s), {:.1} MB",
                    r.series,
                    r.jobs,
                    r.bytes as f64 / 1e6
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => {
            let cfg = config()?;
            let report = kneenode::doctor::run(&cfg);
            print!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config(ConfigCommand::Check) => {
            let cfg = config()?;
            print!("{}", cfg.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Queue(args)) => {
            kneenode::bench::queue(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Mesh(args)) => {
            kneenode::bench::mesh(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Nsm(args)) => {
            kneenode::bench::nsm::nsm(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Scp => {
            let cfg = config()?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(serve(
                cfg,
                Services {
                    sweeper: false,
                    no_workers: true,
                    portal: false,
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => {
            let cfg = config()?;
            let devices = if args.device.is_empty() {
                cfg.worker.devices.clone()
            } else {
                args.device.clone()
            };
            let remote = match (&args.node_url, &args.token_file) {
                (Some(url), Some(token)) => Some(
                    kneenode::worker::remote::RemoteNode::new(url, token)
                        .context("reading the node's token")?,
                ),
                _ => None,
            };
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(run_workers(cfg, devices, remote))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Portal => {
            let cfg = config()?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(run_portal(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let cfg = config()?;
            run_pipeline(&cfg, args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RunJob { job_dir } => {
            let code = kneenode::worker::child::run_job(job_dir);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::User(cmd) => {
            let cfg = config()?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let db = rt.block_on(open_and_migrate(&cfg, 2))?;
            kneenode::portal::auth::cli::run(&db, cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo { peer } => {
            let cfg = config()?;
            let peer = Peer::parse(peer).context("the peer must be written AE@host:port")?;
            let started = std::time::Instant::now();
            scu::echo(&cfg.node.ae_title, &peer, Timeouts::default())?;
            println!(
                "C-ECHO to {peer}: success in {} ms",
                started.elapsed().as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Send { files, to } => {
            let cfg = config()?;
            let peer = match cfg.destinations.iter().find(|d| &d.name == to) {
                Some(d) => Peer::from_destination(d)?,
                None => Peer::parse(to).with_context(|| {
                    format!("{to:?} is neither a configured destination nor AE@host:port")
                })?,
            };
            let n = scu::send(&cfg.node.ae_title, &peer, files, Timeouts::default())?;
            println!("{n} instance(s) sent to {peer}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Phantom(args) => {
            write_phantom(args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints each stage as it starts, with the time since the start.
struct StderrProgress(std::time::Instant);

impl kneenode::pipeline::run::Progress for StderrProgress {
    fn step(&mut self, step: usize, total: usize, name: &str) {
        eprintln!(
            "[{step}/{total}] {name} ({:.1} s)",
            self.0.elapsed().as_secs_f64()
        );
    }
}

/// `kneenode run --labels`: meshes and thickness of an existing segmentation (and, with
/// `--nsm`, the NSM fit).
fn analyse_labels(
    cfg: &Config,
    args: &RunArgs,
    labels_path: &std::path::Path,
) -> anyhow::Result<()> {
    use kneenode::pipeline::label_map::LabelMap;
    use kneenode::pipeline::models::Registry;
    use kneenode::pipeline::run::{run_labels, RunOptions};
    let map = match &args.label_map {
        Some(p) => LabelMap::load(p)?,
        None => LabelMap::default(),
    };
    let nsm = args.nsm_run()?;
    // The registry is only read for NSM: a segmentation needs no model.
    let registry = match nsm {
        Some(_) => Registry::load(&cfg.models.registry)?,
        None => Registry::default(),
    };
    let device = kneenode::device::select(&args.device)?;
    let options = RunOptions {
        model: None,
        device,
        tta: false,
        select: kneenode::volume::Selection::default(),
        side: None,
        shapes: Some(args.cartilage_smoothing),
        nsm,
    };
    let mut progress = StderrProgress(std::time::Instant::now());
    let out = run_labels(
        labels_path,
        &map,
        &args.out,
        &registry,
        &options,
        &mut progress,
    )?;
    finish_report(&out, device);
    Ok(())
}

/// What `kneenode run` prints at the end: notes and NSM figures to stderr, the files written
/// to stdout.
fn finish_report(out: &kneenode::pipeline::run::RunOutput, device: tch::Device) {
    for note in out
        .notes
        .iter()
        .chain(out.shapes.iter().flat_map(|s| &s.notes))
    {
        eprintln!("note: {note}");
    }
    if let Some(nsm) = &out.nsm {
        report_nsm(nsm);
    }
    let total: f64 = out.timings.iter().map(|(_, s)| s).sum();
    match &out.model {
        Some((name, version)) => eprintln!(
            "done in {total:.1} s on {} with model {name} v{version}",
            kneenode::device::name(device)
        ),
        None => eprintln!("done in {total:.1} s on {}", kneenode::device::name(device)),
    }
    for f in &out.files {
        println!("{}", f.display());
    }
}

fn run_pipeline(cfg: &Config, args: &RunArgs) -> anyhow::Result<()> {
    use kneenode::pipeline::models::Registry;
    use kneenode::pipeline::run::{run, RunOptions};
    let input = match (&args.input, &args.labels) {
        (_, Some(labels)) => return analyse_labels(cfg, args, labels),
        (Some(input), None) => input,
        (None, None) => anyhow::bail!("give an input image, or --labels"),
    };
    let registry = Registry::load(&cfg.models.registry)?;
    let device = kneenode::device::select(&args.device)?;
    let echo = args
        .echo
        .as_deref()
        .map(|e| serde_json::from_value(e.parse::<i64>().map_or_else(|_| e.into(), Into::into)))
        .transpose()
        .context("--echo")?;
    let plane = args
        .plane
        .as_deref()
        .map(|p| serde_json::from_value(p.into()))
        .transpose()
        .context("--plane must be sagittal, coronal or axial")?;
    let options = RunOptions {
        model: args.model.clone(),
        device,
        tta: args.tta,
        select: kneenode::volume::Selection { plane, echo },
        side: args.side,
        shapes: (!args.segment_only).then_some(args.cartilage_smoothing),
        nsm: args.nsm_run()?,
    };
    let mut progress = StderrProgress(std::time::Instant::now());
    let out = run(input, &args.out, &registry, &options, &mut progress)?;
    finish_report(&out, device);
    Ok(())
}

fn write_phantom(args: &PhantomArgs) -> anyhow::Result<()> {
    use kneenode::phantom::{generate, tissue_volumes_mm3, PhantomParams};
    let mut params = if args.small {
        PhantomParams::small(args.seed)
    } else {
        PhantomParams {
            seed: args.seed,
            ..Default::default()
        }
    };
    if let Some(dims) = args.matrix {
        params = params.with_matrix(dims);
    }
    params.left = args.left;
    params.random_pose = !args.no_pose;
    if let Some(mm) = args.cartilage_mm {
        params.cartilage_thickness_mm = mm;
    }
    let started = std::time::Instant::now();
    let phantom = generate(&params);
    let info = kneenode::dicom::write::SeriesInfo {
        laterality: if args.left { "L".into() } else { "R".into() },
        series_description: format!("SAG 3D DESS PHANTOM seed {}", args.seed),
        ..Default::default()
    };
    let files = if args.enhanced {
        vec![kneenode::dicom::write_enhanced::write_enhanced_mr(
            &[&phantom.image],
            &info,
            &args.out.join("dicom").join("enhanced.dcm"),
        )?]
    } else {
        kneenode::dicom::write::write_mr_series(&phantom.image, &info, &args.out.join("dicom"))?
    };
    kneenode::volume::write_nifti(&args.out.join("image.nii.gz"), &phantom.image)?;
    kneenode::volume::write_nifti(&args.out.join("labels.nii.gz"), &phantom.labels)?;
    kneenode::volume::write_nrrd(&args.out.join("labels.nrrd"), &phantom.labels)?;
    let v = tissue_volumes_mm3(&phantom.labels);
    println!(
        "phantom seed {} ({:?} voxels of {:?} mm, {:.1} s): {} DICOM file(s), image.nii.gz, labels.nii.gz/.nrrd in {}",
        args.seed,
        phantom.image.dims(),
        phantom.params.spacing,
        started.elapsed().as_secs_f64(),
        files.len(),
        args.out.display()
    );
    println!(
        "femur {:.0} cm³, tibia {:.0} cm³, femoral cartilage {:.1} cm³",
        v[7] / 1e3,
        v[8] / 1e3,
        v[2] / 1e3
    );
    Ok(())
}

fn open_db(cfg: &Config, pool_size: u32) -> anyhow::Result<Db> {
    let url = cfg.database_url();
    Db::open(&url, pool_size).with_context(|| "opening the database".to_string())
}

/// Opens the database and applies pending migrations (off the async threads).
async fn open_and_migrate(cfg: &Config, pool_size: u32) -> anyhow::Result<Db> {
    let db = open_db(cfg, pool_size)?;
    let migrated = tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.migrate()
    })
    .await??;
    info!(
        backend = db.kind().name(),
        url = db.url_redacted(),
        migrated,
        "database ready"
    );
    Ok(db)
}

/// Which services a node process runs.
struct Services {
    /// Sweep expired job leases.
    sweeper: bool,
    /// Leave job processing to separate `kneenode worker` processes.
    no_workers: bool,
    /// Serve HTTP (the internal API now, the portal later).
    portal: bool,
}

/// `kneenode serve` (and `scp`): the services in one process until SIGTERM or Ctrl-C.
async fn serve(cfg: Config, services: Services) -> anyhow::Result<()> {
    match &cfg.source {
        Some(path) => info!(file = %path.display(), "configuration loaded"),
        None => info!("no configuration file: built-in defaults"),
    }
    std::fs::create_dir_all(&cfg.storage.dir)
        .with_context(|| format!("creating storage folder {}", cfg.storage.dir.display()))?;
    let pool =
        cfg.node.max_associations + u32::try_from(cfg.worker.devices.len()).unwrap_or(1) * 2 + 4;
    let db = open_and_migrate(&cfg, pool).await?;
    if services.no_workers {
        info!("no workers in this process");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let store = Store::open(
        &cfg.storage.dir,
        db.clone(),
        cfg.storage.max_disk_used_percent,
    )
    .with_context(|| {
        format!(
            "opening the instance store in {}",
            cfg.storage.dir.display()
        )
    })?;
    let (ended_tx, ended_rx) = tokio::sync::mpsc::unbounded_channel();
    let scp_stats = Arc::new(ScpStats::default());
    let scp = Scp::bind(&cfg.node, store, scp_stats.clone())
        .await
        .with_context(|| format!("binding the DICOM port {}:{}", cfg.node.bind, cfg.node.port))?
        .notify_ended(ended_tx);
    info!(addr = %scp.local_addr()?, ae_title = %cfg.node.ae_title, "DICOM SCP listening");
    let scp_task = tokio::spawn(scp.run(stop_rx.clone()));

    let watcher = SeriesWatcher::new(
        Queue::new(db.clone()),
        Router::new(&cfg.routing)?,
        Duration::from_secs(cfg.series.quiet_seconds),
        cfg.worker.max_attempts,
        &cfg.storage.dir,
    );
    let watcher_task = tokio::spawn(watcher.run(ended_rx, stop_rx.clone()));
    let dispatcher = Dispatcher::new(db.clone(), &cfg.node.ae_title)
        .with_destinations(&cfg.destinations)
        .context("loading the destinations' TLS settings")?;
    let dispatcher_task = tokio::spawn(dispatcher.run(Duration::from_millis(500), stop_rx.clone()));

    let portal = if services.portal {
        let portal = kneenode::portal::Portal::bind(&cfg, db.clone(), Some(scp_stats.clone()))
            .context("starting the HTTP server (portal.bind, portal.port)")?;
        info!(addr = %portal.local_addr(), "portal listening");
        Some(portal.start())
    } else {
        None
    };
    let workers = if services.no_workers {
        None
    } else {
        Some(start_workers(&cfg, &db, None)?)
    };

    let retention = services.sweeper.then(|| {
        tokio::spawn(retention_loop(
            db.clone(),
            cfg.storage.dir.clone(),
            cfg.storage.retention_days,
        ))
    });
    let sweeper = services.sweeper.then(|| {
        // Leases of crashed workers expire; someone must notice even when no worker is claiming.
        let queue = Queue::new(db.clone());
        let every = Duration::from_secs(cfg.worker.heartbeat_s.max(1));
        tokio::spawn(sweep_leases(queue, every))
    });

    let notifier = kneenode::notify::Notifier::from_env();
    let workers_n = workers.as_ref().map_or(0, |w| w.len());
    notifier.ready(&format!(
        "DICOM {} on port {}; {workers_n} worker(s)",
        cfg.node.ae_title, cfg.node.port
    ));
    let watchdog = start_watchdog(&notifier);
    info!("kneenode running; SIGTERM or Ctrl-C stops it");
    shutdown_signal().await?;
    notifier.stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    info!("shutting down");
    // The receiver lives in the SCP task; if it already ended there is nothing to tell.
    stop_tx.send(true).ok();
    if let Err(e) = scp_task.await {
        warn!(error = %e, "SCP task ended abnormally");
    }
    if let Err(e) = watcher_task.await {
        warn!(error = %e, "series watcher ended abnormally");
    }
    if let Err(e) = dispatcher_task.await {
        warn!(error = %e, "dispatcher ended abnormally");
    }
    if let Some(s) = sweeper {
        s.abort();
    }
    if let Some(r) = retention {
        r.abort();
    }
    if let Some(pool) = workers {
        tokio::task::spawn_blocking(move || pool.stop()).await?;
    }
    if let Some((handle, task)) = portal {
        handle.stop(true).await;
        if let Ok(Err(e)) = task.await {
            warn!(error = %e, "portal ended abnormally");
        }
    }
    info!("stopped");
    Ok(())
}

/// `kneenode portal`: the HTTP side alone until SIGTERM or Ctrl-C.
async fn run_portal(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.storage.dir)
        .with_context(|| format!("creating storage folder {}", cfg.storage.dir.display()))?;
    let db = open_and_migrate(&cfg, 8).await?;
    let portal = kneenode::portal::Portal::bind(&cfg, db, None)
        .context("starting the HTTP server (portal.bind, portal.port)")?;
    info!(addr = %portal.local_addr(), "portal listening");
    let (handle, task) = portal.start();
    kneenode::notify::Notifier::from_env().ready("portal");
    shutdown_signal().await?;
    info!("shutting down");
    handle.stop(true).await;
    if let Ok(Err(e)) = task.await {
        warn!(error = %e, "portal ended abnormally");
    }
    info!("stopped");
    Ok(())
}

/// Starts one supervisor per configured device.
fn start_workers(
    cfg: &Config,
    db: &Db,
    remote: Option<&kneenode::worker::remote::RemoteNode>,
) -> anyhow::Result<kneenode::worker::Pool> {
    let devices = kneenode::worker::expand_devices(&cfg.worker.devices)
        .context("choosing the worker devices (worker.devices)")?;
    let pool = kneenode::worker::Pool::start(
        &Queue::new(db.clone()),
        &Arc::new(cfg.clone()),
        &devices,
        remote,
    )
    .context("starting the workers")?;
    info!(devices = ?devices, "workers started");
    Ok(pool)
}

/// `kneenode worker`: supervisors and a lease sweeper, no SCP, until SIGTERM or Ctrl-C.
async fn run_workers(
    mut cfg: Config,
    devices: Vec<String>,
    remote: Option<kneenode::worker::remote::RemoteNode>,
) -> anyhow::Result<()> {
    cfg.worker.devices = devices;
    let pool_size = u32::try_from(cfg.worker.devices.len()).unwrap_or(1) * 2 + 2;
    let db = open_and_migrate(&cfg, pool_size).await?;
    if let Some(r) = &remote {
        info!(node = ?r, "remote worker: inputs and results go through the node's internal API");
    }
    let pool = start_workers(&cfg, &db, remote.as_ref())?;
    // A lone worker host must also notice crashed peers' leases.
    let every = Duration::from_secs(cfg.worker.heartbeat_s.max(1));
    let sweeper = tokio::spawn(sweep_leases(Queue::new(db.clone()), every));
    let notifier = kneenode::notify::Notifier::from_env();
    notifier.ready(&format!("{} worker(s)", pool.len()));
    let watchdog = start_watchdog(&notifier);
    shutdown_signal().await?;
    notifier.stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    info!("shutting down; running jobs are handed back");
    sweeper.abort();
    tokio::task::spawn_blocking(move || pool.stop()).await?;
    info!("stopped");
    Ok(())
}

/// Applies retention every hour (the first time a minute after start).
async fn retention_loop(db: Db, storage: std::path::PathBuf, days: u32) {
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let (db, storage) = (db.clone(), storage.clone());
        let done = tokio::task::spawn_blocking(move || {
            let now = chrono::Utc::now().naive_utc();
            let plan = kneenode::retention::plan(&db, &storage, days, now)?;
            Ok::<_, anyhow::Error>(kneenode::retention::apply(&db, &plan)?)
        })
        .await;
        match done {
            Ok(Ok(r)) if r != Default::default() => info!(
                series = r.series,
                jobs = r.jobs,
                mb = r.bytes / 1_000_000,
                "retention removed expired data"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "retention failed"),
            Err(e) => warn!(error = %e, "retention task failed"),
        }
    }
}

async fn sweep_leases(queue: Queue, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let q = queue.clone();
        match tokio::task::spawn_blocking(move || q.requeue_expired()).await {
            Ok(Ok(r)) if r != Default::default() => info!(
                requeued = r.requeued,
                failed = r.failed,
                cancelled = r.cancelled,
                "expired job leases swept"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "lease sweep failed"),
            Err(e) => warn!(error = %e, "lease sweep task failed"),
        }
    }
}

/// Sends `WATCHDOG=1` at half of systemd's watchdog interval while the runtime runs, so a
/// wedged process is restarted.
fn start_watchdog(notifier: &kneenode::notify::Notifier) -> Option<tokio::task::JoinHandle<()>> {
    let every = notifier.watchdog_interval()?;
    let notifier = notifier.clone();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            notifier.watchdog();
        }
    }))
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
