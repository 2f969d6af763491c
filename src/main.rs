//! The `portcullis` command: parse the CLI, load settings, run.

use std::path::PathBuf;
use std::process::ExitCode;

use awc::http::Method;
use clap::{Parser, Subcommand};
use portcullis::config::Settings;
use portcullis::migrations::MigrationCommand;
use portcullis::node_client;
use portcullis::startup::Application;

/// Portcullis API gateway.
#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A Kong-compatible API gateway with an OAuth 2.0 authorization server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file: TOML, or Kong's `kong.conf` format for a `*.conf`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make the status listener's readiness probe (`GET /status/ready`) answer 503 from now on,
    /// so that load balancers stop sending this node new traffic before it is stopped (Kong's
    /// `kong drain`). Reads the node's configuration to find its first status listener.
    Drain {
        /// Configuration file: TOML, or Kong's `kong.conf` format for a `*.conf`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Whether the running node is ready (Kong's `kong health`, as a readiness check): its
    /// first status listener's `GET /status/ready`, or without one its admin API's `/status`
    /// with a reachable database. Exit status 0 when it is, 1 with why not.
    Health {
        /// Configuration file: TOML, or Kong's `kong.conf` format for a `*.conf`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Database migrations (database = postgres).
    Migrations {
        /// Configuration file: TOML, or Kong's `kong.conf` format for a `*.conf`.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: MigrationsCommand,
    },
}

#[derive(Subcommand)]
enum MigrationsCommand {
    /// Create every table in a fresh database (or schema).
    Bootstrap,
    /// Apply the pending migrations.
    Up,
    /// List the executed and pending migrations.
    List,
    /// Drop every Portcullis table (the whole schema when pg_schema is set).
    Reset {
        /// Confirm: without it nothing is dropped.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective settings with secrets masked.
    Check {
        /// Configuration file: TOML, or Kong's `kong.conf` format for a `*.conf`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a declarative configuration file (YAML or JSON), as `database = off` loads it.
    Parse {
        /// The declarative file.
        file: PathBuf,
    },
    /// Write a commented starter declarative configuration (refuses to overwrite a file).
    Init {
        /// Where to write it.
        #[arg(default_value = "kong.yml")]
        file: PathBuf,
    },
    /// Import a declarative configuration file into the database (database = postgres): checked
    /// as `config parse` checks it, then every entity upserted by id in one transaction.
    #[command(name = "db_import")]
    DbImport {
        /// The declarative file (YAML or JSON).
        file: PathBuf,
        /// Configuration file: TOML, or Kong's `kong.conf` format for a `*.conf`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Export the database (database = postgres) as a declarative configuration (Kong 3.0
    /// YAML); to standard output without a file, never over an existing file.
    #[command(name = "db_export")]
    DbExport {
        /// Where to write it.
        file: Option<PathBuf>,
        /// Configuration file: TOML, or Kong's `kong.conf` format for a `*.conf`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn parse_declarative(file: &std::path::Path) -> Result<(), String> {
    actix_rt::System::new().block_on(async {
        let plugins = portcullis::admin::declarative::offline_plugins();
        portcullis::admin::config::read_file(file, &plugins)
            .await
            .map(|_| println!("parse successful"))
            .map_err(|e| format!("{}: {e}", file.display()))
    })
}

fn init_declarative(file: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
    out.write_all(portcullis::admin::declarative::STARTER.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    println!(
        "{} written; check it with `portcullis config parse {}`",
        file.display(),
        file.display()
    );
    Ok(())
}

fn db_import(settings: &Settings, file: &std::path::Path) -> Result<(), String> {
    portcullis::telemetry::init(settings);
    actix_rt::System::new().block_on(async {
        let imported = portcullis::declarative_db::import(settings, file)
            .await
            .map_err(|e| e.to_string())?;
        println!("parse successful, beginning import");
        for (entity, count) in &imported.counts {
            println!("  {entity}: {count}");
        }
        println!("import successful");
        Ok(())
    })
}

fn db_export(settings: &Settings, file: Option<&std::path::Path>) -> Result<(), String> {
    use std::io::Write;
    let exists = |file: &std::path::Path| {
        format!("{} already exists. Will not overwrite it.", file.display())
    };
    if let Some(file) = file.filter(|f| f.exists()) {
        return Err(exists(file));
    }
    portcullis::telemetry::init(settings);
    let text = actix_rt::System::new().block_on(async {
        portcullis::declarative_db::export(settings)
            .await
            .map_err(|e| e.to_string())
    })?;
    let Some(file) = file else {
        print!("{text}");
        return Ok(());
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => exists(file),
            _ => format!("cannot create {}: {e}", file.display()),
        })?;
    out.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    eprintln!("{} written", file.display());
    Ok(())
}

fn load(path: Option<&PathBuf>) -> Result<Settings, String> {
    Settings::load(path.map(PathBuf::as_path), std::env::vars()).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config },
        } => load(config.as_ref()).map(|s| {
            print!("{}", s.to_masked_toml());
            eprintln!("configuration ok");
        }),
        Command::Config {
            command: ConfigCommand::Parse { file },
        } => parse_declarative(&file),
        Command::Config {
            command: ConfigCommand::Init { file },
        } => init_declarative(&file),
        Command::Config {
            command: ConfigCommand::DbImport { file, config },
        } => load(config.as_ref()).and_then(|s| db_import(&s, &file)),
        Command::Config {
            command: ConfigCommand::DbExport { file, config },
        } => load(config.as_ref()).and_then(|s| db_export(&s, file.as_deref())),
        Command::Serve { config } => load(config.as_ref()).and_then(serve),
        Command::Drain { config } => load(config.as_ref()).and_then(|s| drain(&s)),
        Command::Health { config } => load(config.as_ref()).and_then(|s| health(&s)),
        Command::Migrations { config, command } => {
            let command = match command {
                MigrationsCommand::Bootstrap => MigrationCommand::Bootstrap,
                MigrationsCommand::Up => MigrationCommand::Up,
                MigrationsCommand::List => MigrationCommand::List,
                MigrationsCommand::Reset { yes } => MigrationCommand::Reset { confirmed: yes },
            };
            load(config.as_ref()).and_then(|s| migrations(s, command))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> Result<(), String> {
    portcullis::telemetry::init(&settings);
    actix_rt::System::new().block_on(async move {
        let app = Application::build(settings)
            .await
            .map_err(|e| e.to_string())?;
        app.run_until_stopped().await.map_err(|e| e.to_string())
    })
}

/// `POST /status/ready` with `{"status": "draining"}` to the node's first status listener, with
/// `admin_token` when one is set.
fn drain(settings: &Settings) -> Result<(), String> {
    let listeners = settings.status_listeners().map_err(|e| e.to_string())?;
    let url = node_client::url_on("status_listen", &listeners, "/status/ready")?;
    let body = serde_json::json!({ "status": "draining" });
    let answer = node_client::send(
        Method::POST,
        &url,
        settings.admin_token.as_ref(),
        Some(&body),
    )?;
    if answer.status != 204 {
        return Err(format!(
            "unexpected response status from {url}: {}",
            answer.status
        ));
    }
    println!("the node's status successfully changed to 'draining'");
    Ok(())
}

/// Whether the node answers as ready: `GET /status/ready` on its first status listener, or,
/// without one, `GET /status` on its first admin listener (with `admin_token`) saying the
/// database is reachable.
fn health(settings: &Settings) -> Result<(), String> {
    let status_listen = settings.status_listeners().map_err(|e| e.to_string())?;
    let via_status = !status_listen.is_empty();
    let (url, token) = if via_status {
        let url = node_client::url_on("status_listen", &status_listen, "/status/ready")?;
        (url, None)
    } else {
        let admin_listen = settings.admin_listeners().map_err(|e| e.to_string())?;
        let url = node_client::url_on("admin_listen", &admin_listen, "/status")?;
        (url, settings.admin_token.as_ref())
    };
    let answer = node_client::send(Method::GET, &url, token, None)?;
    let reachable = || {
        serde_json::from_str::<serde_json::Value>(&answer.body)
            .is_ok_and(|b| b["database"]["reachable"] == true)
    };
    if answer.status != 200 || !(via_status || reachable()) {
        return Err(format!(
            "not healthy: {url} answered {} {}",
            answer.status,
            answer.body.trim()
        ));
    }
    println!("healthy: {url} answered {}", answer.status);
    Ok(())
}

fn migrations(settings: Settings, command: MigrationCommand) -> Result<(), String> {
    portcullis::telemetry::init(&settings);
    actix_rt::System::new().block_on(async move {
        let out = portcullis::migrations::run(&settings, command)
            .await
            .map_err(|e| e.to_string())?;
        print!("{out}");
        Ok(())
    })
}
