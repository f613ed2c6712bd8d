//! The `policyd` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use anyhow::Context;
use cedar_policy::EntityUid;
use clap::Parser;
use policyd::cli::{
    ActivityArgs, CheckArgs, Cli, Command, DiffArgs, FmtArgs, ImportArgs, SearchCommand,
    SearchStore, ServeArgs, StorageArgs, TestArgs, UpstreamArgs, UpstreamCommand,
};
use policyd::store::sqlite::SqliteStore;
use policyd::store::{StorageLedger, Store};
use policyd::{
    analysis, daemon, formatter, import, logging, policy, policy_test, report, server, shutdown,
    storage,
};

/// The process's allocator. Every Cedar entity holds its attributes in a B-tree whose node
/// takes about 1.1 KB: just past the largest size glibc's malloc serves from its per-thread
/// cache, so over a large store, where nearly every decision builds one entity and the entity
/// cache frees another, glibc's slower paths (binning, consolidating freed chunks) took about
/// 5% of the daemon's samples. jemalloc's thread caches serve that size, and its peak memory
/// at 1M entities measured no higher (BENCHMARKS.md, "The 1M target").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => return check(args),
        Command::Diff(args) => return diff(args),
        Command::Import(args) => import(args),
        Command::Storage(args) => storage(args),
        Command::Activity(args) => activity(args),
        Command::Test(args) => return test(args),
        Command::Fmt(args) => return fmt(args),
        Command::Search(command) => search(command),
        Command::Upstream(args) => upstream(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config().map_err(anyhow::Error::msg)?;
    let state = daemon::open(&config).map_err(|e| match e {
        daemon::StartError::Policies(load) => anyhow::anyhow!(
            "refusing to serve invalid policies:\n{}",
            lines(&load.errors())
        ),
        other => anyhow::Error::new(other),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = server::Listener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.describe();
        let base = args
            .authzen_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let _ = state.authzen_base.set(base);
        let token = config.auth.token.is_some();
        tracing::info!(%addr, token, open_decisions = config.auth.open_decisions, "policyd listening");
        daemon::spawn_background(&state, &config);
        server::run(listener, state.clone(), shutdown::signal()).await;
        daemon::finish(&state).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// `policyd upstream migrate|import|prune`.
fn upstream(args: UpstreamArgs) -> anyhow::Result<()> {
    use policyd::upstream::{self, Upstream};
    let url = args
        .upstream
        .context("--upstream (or POLICYD_UPSTREAM) is required: postgres://user@host/db")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let up = Upstream::new(
            &url,
            std::time::Duration::from_secs(300),
            args.upstream_ca.as_deref(),
        )?;
        let mut client = up.client().await?;
        let (from, to) = upstream::schema::migrate(&mut client).await?;
        drop(client);
        match args.command {
            UpstreamCommand::Migrate if from == to => {
                println!("upstream schema is current (version {to})")
            }
            UpstreamCommand::Migrate => {
                println!("upstream schema migrated from version {from} to {to}")
            }
            UpstreamCommand::Import { db } => {
                let done = upstream::import::import(&up, &db).await?;
                match done.revision {
                    Some(rev) => println!(
                        "imported {} entities from {} up to revision {rev}",
                        done.entities,
                        db.display()
                    ),
                    None => println!("{} holds no entities; nothing imported", db.display()),
                }
            }
            UpstreamCommand::Prune { keep } => {
                let oldest = up.prune(keep).await?;
                println!("the change log now starts at revision {oldest}");
            }
        }
        Ok(())
    })
}

/// `policyd check`: Cedar's parse and validation errors, then its warnings, each located; with a
/// valid set, the lints.
fn check(args: CheckArgs) -> ExitCode {
    let (loaded, warnings) = policy::check_dir(&args.policies);
    let warnings: String = warnings.iter().map(|w| format!("warning: {w}\n")).collect();
    match loaded {
        Ok(snapshot) => {
            print!("{warnings}");
            let schema = if snapshot.schema.is_some() {
                "validated against the schema"
            } else {
                "not validated: no schema"
            };
            println!(
                "ok: {} policies, {schema}, revision {}",
                snapshot.infos.len(),
                snapshot.revision
            );
            if snapshot.schema.is_some() {
                let options = analysis::Options {
                    cvc5: args.solver.cvc5,
                    timeout: args.analysis_timeout,
                    cancel: None,
                };
                match analysis::lint(&snapshot, &options) {
                    Ok(lints) => print!("{}", analysis::lint_text(&lints)),
                    Err(e) => println!("note: dead and shadowed policy lints skipped: {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", lines(&e.errors()));
            print!("{warnings}");
            ExitCode::FAILURE
        }
    }
}

/// `policyd diff`: 0 when nothing changed, 1 when something did, 2 when it could not tell.
fn diff(args: DiffArgs) -> ExitCode {
    const CANNOT: u8 = 2;
    let load = |dir: &std::path::Path, flag: &str| {
        policy::load_dir(dir).map_err(|e| {
            format!(
                "cannot load {flag} {}:\n{}",
                dir.display(),
                lines(&e.errors())
            )
        })
    };
    let (from, to) = match (load(&args.from, "--from"), load(&args.to, "--to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"status": "unavailable", "reason": e})
                );
            }
            eprintln!("error: {e}");
            return ExitCode::from(CANNOT);
        }
    };
    let options = analysis::Options {
        cvc5: args.solver.cvc5,
        timeout: args.analysis_timeout,
        cancel: None,
    };
    let report = analysis::diff(&from, &to, &options);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: cannot render the report: {e}");
                return ExitCode::from(CANNOT);
            }
        }
    } else {
        print!("{}", analysis::diff_text(&report));
    }
    if !report.is_complete() {
        ExitCode::from(CANNOT)
    } else if report.changed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `policyd test`: 0 when every case passes, 1 when one fails, 2 when something cannot run.
fn test(args: TestArgs) -> ExitCode {
    const CANNOT: u8 = 2;
    let snapshot = match policy::load_dir(&args.policies) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            eprintln!(
                "error: cannot load the policies in {}:\n{}",
                args.policies.display(),
                lines(&e.errors())
            );
            return ExitCode::from(CANNOT);
        }
    };
    let files = match policy_test::discover(&args.policies, &args.paths) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(CANNOT);
        }
    };
    let report = policy_test::run(&snapshot, &files);
    for line in report.failure_lines() {
        println!("{line}");
    }
    for e in report.file_errors() {
        eprintln!("error: {e}");
    }
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, policy_test::junit::render(&report))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::from(CANNOT);
    }
    println!("{}", report.summary());
    ExitCode::from(report.exit_code())
}

/// `policyd fmt`: 0 when done (or, with --check, nothing to change), 1 when --check found a
/// file to change, 2 when a file cannot be read, parsed or written.
fn fmt(args: FmtArgs) -> ExitCode {
    const CANNOT: u8 = 2;
    let files = match formatter::files(&args.paths, &args.policies) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(CANNOT);
        }
    };
    let (mut changed, mut failed) = (0, 0);
    for file in &files {
        match formatter::format_file(file, args.check) {
            Ok(false) => {}
            Ok(true) if args.check => {
                changed += 1;
                println!("would reformat {}", file.display());
            }
            Ok(true) => {
                changed += 1;
                println!("reformatted {}", file.display());
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    let verb = if args.check {
        "would be reformatted"
    } else {
        "reformatted"
    };
    println!("{} files checked, {changed} {verb}", files.len());
    if failed > 0 {
        ExitCode::from(CANNOT)
    } else if args.check && changed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The page cache of `policyd import`'s writer: a 100k-entity store is about 60 MiB.
const IMPORT_CACHE_MIB: u32 = 128;

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let snapshot = policy::load_dir(&args.policies)
        .map_err(|e| anyhow::anyhow!("cannot load the schema:\n{}", lines(&e.errors())))?;
    let sqlite = SqliteStore::open(&args.db)?.for_import(IMPORT_CACHE_MIB)?;
    let store = Store::new(Box::new(sqlite), 1, 0);
    let n = import::import_files(&store, snapshot.schema.as_ref(), &args.files)?;
    println!("imported {n} entities into {}", args.db.display());
    Ok(())
}

fn storage(args: StorageArgs) -> anyhow::Result<()> {
    let uid: EntityUid = args.entity.parse().map_err(|e| {
        anyhow::anyhow!(
            "`{}` is not a Cedar uid like Organization::\"acme\": {e}",
            args.entity
        )
    })?;
    anyhow::ensure!(args.db.exists(), "no store at {}", args.db.display());
    let store = SqliteStore::open(&args.db)?;
    let now = storage::now_micros();
    let usage = store
        .usage(&uid, now)?
        .ok_or_else(|| anyhow::anyhow!("{uid} is not stored in {}", args.db.display()))?;
    let ty = uid.type_name().to_string();
    let text = if ty == storage::ORGANIZATION_TYPE {
        let mut projects = Vec::new();
        for p in store.children(&uid, storage::PROJECT_TYPE)? {
            if let Some(u) = store.usage(&p, now)? {
                projects.push((p, u));
            }
        }
        report::organization_storage(&uid, &usage, &mut projects)
    } else {
        report::project_storage(&uid, &usage)
    };
    print!("{text}");
    Ok(())
}

fn activity(args: ActivityArgs) -> anyhow::Result<()> {
    let path = args
        .activity_db
        .unwrap_or_else(|| policyd::config::ActivityConfig::beside(&args.db).db_path);
    anyhow::ensure!(path.exists(), "no activity log at {}", path.display());
    let time = |t: &Option<String>| -> anyhow::Result<Option<i64>> {
        t.as_deref()
            .map(|t| {
                let at = humantime::parse_rfc3339_weak(t)
                    .with_context(|| format!("`{t}` is not an RFC 3339 time"))?;
                let micros = at.duration_since(std::time::UNIX_EPOCH)?.as_micros();
                Ok(i64::try_from(micros)?)
            })
            .transpose()
    };
    let filter = policyd::activity::Filter {
        organization: args.org.clone(),
        since: time(&args.since)?,
        until: time(&args.until)?,
        limit: args.limit.max(1),
        ..Default::default()
    };
    let page = policyd::activity::ActivityLog::reader(&path).query(&filter)?;
    print!("{}", report::activity(&args.org, &page.records));
    Ok(())
}

/// `policyd search`: decided by the same path as `serve` (see [`policyd::search`]).
fn search(command: SearchCommand) -> anyhow::Result<()> {
    use policyd::search::{SearchQuery, Side};
    let parse_uid = |what: &str, s: &str| -> anyhow::Result<EntityUid> {
        s.parse().map_err(|e| {
            anyhow::anyhow!("--{what} `{s}` is not a Cedar uid like User::\"bob\": {e}")
        })
    };
    let parse_action = |s: &str| -> anyhow::Result<EntityUid> {
        if s.contains("::") {
            parse_uid("action", s)
        } else {
            policyd::uid::from_parts("Action", s).map_err(anyhow::Error::msg)
        }
    };
    let open = |from: &SearchStore| -> anyhow::Result<(Store, policy::PolicySnapshot, Option<serde_json::Value>)> {
        let snapshot = policy::load_dir(&from.policies)
            .map_err(|e| anyhow::anyhow!("cannot load the policies:\n{}", lines(&e.errors())))?;
        anyhow::ensure!(from.db.exists(), "no store at {}", from.db.display());
        let store = Store::new(Box::new(SqliteStore::open(&from.db)?), 64 << 20, 0);
        let context = from
            .context
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .context("--context is not JSON")?;
        Ok((store, snapshot, context))
    };
    let (query, from) = match command {
        SearchCommand::Actions(args) => {
            let (store, snapshot, context) = open(&args.from)?;
            let principal = parse_uid("principal", &args.principal)?;
            let resource = parse_uid("resource", &args.resource)?;
            let mut actions = policyd::search::actions(
                &store,
                &snapshot,
                &principal,
                &resource,
                context.as_ref(),
            )?;
            actions.truncate(args.from.limit.unwrap_or(usize::MAX));
            let rows: Vec<Vec<String>> = actions.iter().map(|a| vec![a.to_string()]).collect();
            print!("{}", report::table(&["ACTION"], &rows));
            return Ok(());
        }
        SearchCommand::Resources(args) => (
            (
                Side::Resource,
                parse_uid("principal", &args.principal)?,
                parse_action(&args.action)?,
                args.ty,
            ),
            args.from,
        ),
        SearchCommand::Subjects(args) => (
            (
                Side::Subject,
                parse_uid("resource", &args.resource)?,
                parse_action(&args.action)?,
                args.ty,
            ),
            args.from,
        ),
    };
    let (store, snapshot, context) = open(&from)?;
    let (side, known, action, ty) = query;
    let query = SearchQuery {
        side,
        known,
        action,
        ty: ty
            .parse()
            .map_err(|e| anyhow::anyhow!("--type `{ty}` is not a Cedar entity type: {e}"))?,
        context,
    };
    let limit = from.limit.unwrap_or(usize::MAX - 1);
    let page = policyd::search::search(&store, &snapshot, &query, None, limit, None)?;
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|u| vec![u.type_name().to_string(), u.id().unescaped().to_owned()])
        .collect();
    print!("{}", report::table(&["TYPE", "ID"], &rows));
    if page.more {
        println!("(more than {limit}; raise --limit to see them)");
    }
    Ok(())
}

fn lines(errors: &[policy::SourceError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    /// The binary allocates through jemalloc: its statistics see an allocation made here.
    #[test]
    fn the_binary_allocates_with_jemalloc() {
        use tikv_jemalloc_ctl::{epoch, stats};
        const BLOCK: usize = 64 << 20;
        epoch::advance().unwrap();
        let before = stats::allocated::read().unwrap();
        let block = std::hint::black_box(vec![1u8; BLOCK]);
        epoch::advance().unwrap();
        let after = stats::allocated::read().unwrap();
        assert!(
            after >= before + BLOCK,
            "jemalloc saw {before} then {after} bytes"
        );
        drop(block);
    }
}
