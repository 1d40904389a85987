//! `ganglion`: the one binary. Its first argument is the personality:
//! `monolith` (the default) runs every service in one process; a service
//! name runs that service alone (the polylith); `gateway` runs the HTTP edge.
//! Wiring only: no Matrix logic lives here.

mod operator;
mod rebuild;
mod wiring;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ganglion",
    version,
    about = "A Matrix homeserver: one binary, monolith or polylith"
)]
struct Cli {
    /// A TOML configuration file (optional: defaults and GANGLION_* variables otherwise).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Every service in one process with the embedded log (the default).
    Monolith,
    /// The client API (polylith).
    Clientapi,
    /// The roomserver (polylith).
    Roomserver,
    /// The sync API (polylith).
    Syncapi,
    /// The user API (polylith).
    Userapi,
    /// The federation API (polylith).
    Federationapi,
    /// The federation sender (polylith).
    Federationsender,
    /// The key server (polylith).
    Keyserver,
    /// The media API (polylith).
    Mediaapi,
    /// The polylith's HTTP edge: routes each path to its service.
    Gateway,
    /// Prints a commented configuration file with every option at its default.
    GenerateConfig,
    /// Creates the signing key and the federation TLS certificate.
    GenerateKeys,
    /// Creates an account.
    CreateAccount {
        /// The localpart (or full user ID) of the new account.
        user: String,
        /// Make the account a server admin.
        #[arg(long)]
        admin: bool,
        /// The password (default: the GANGLION_PASSWORD environment variable).
        #[arg(long)]
        password: Option<String>,
    },
    /// Loads and validates the configuration, then exits.
    CheckConfig,
    /// Prints every route the gateway forwards, from the services' route
    /// tables: one `service<TAB>pattern` line each.
    Routes,
    /// Registration tokens (`m.login.registration_token`), for servers
    /// whose registration requires one.
    RegistrationToken {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Media: quarantine (kept, served to nobody), release or delete (the
    /// file too, once no other media holds the same bytes), by MXC URI,
    /// by uploader, or by room (the media its events name, as a syncapi
    /// database holds them; encrypted events' media cannot be seen). Run
    /// with the mediaapi's configuration (and a syncapi's, for --room).
    Media {
        #[command(subcommand)]
        action: MediaAction,
    },
    /// Builds a view's database afresh from the start of the log, beside
    /// the live one, and exits once it has caught up with the log as it
    /// stood when the rebuild started. Switching to it is the operator's
    /// step (point the service's `database_url` at it).
    Rebuild {
        /// The view: `syncapi`, or `federationsender` (its joined hosts).
        service: String,
        /// Where the new database goes: `postgres://…` (an empty database)
        /// or `sqlite:<path>`.
        #[arg(long)]
        into: String,
    },
}

#[derive(Subcommand)]
enum MediaAction {
    /// Serves the media to nobody (404) and keeps it.
    Quarantine(MediaTargetArgs),
    /// Serves quarantined media again.
    Unquarantine(MediaTargetArgs),
    /// Deletes the media for good.
    Delete(MediaTargetArgs),
}

#[derive(clap::Args)]
struct MediaTargetArgs {
    /// One medium: `mxc://server/mediaId`.
    mxc: Option<String>,
    /// Everything this user uploaded.
    #[arg(long)]
    user: Option<String>,
    /// Every medium this room's events name (ours and other servers').
    #[arg(long)]
    room: Option<String>,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Creates a token and prints it.
    Create {
        /// The token (default: 16 random letters and digits).
        token: Option<String>,
        /// How many accounts it may register (default: no limit).
        #[arg(long)]
        uses: Option<i64>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Lists every token with its uses and expiry.
    List,
    /// Deletes a token.
    Delete { token: String },
}

/// mimalloc: a sync response builds and frees many small values across
/// threads, where glibc's allocator spent a third of the CPU (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long an exiting process waits for blocking work still running once
/// everything else has stopped (the drain takes at most 2 s + 20 s of a
/// 30 s grace period).
const SHUTDOWN_BLOCKING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> std::process::ExitCode {
    // No transparent huge pages: each first touch of one zeroes 2 MiB.
    // Joining a room of 10 000 members spent a fifth of its CPU in the
    // kernel's page zeroing and ended 50 MiB larger (fedbench). mimalloc is
    // built not to ask for them (`no_thp`: its first arena, made before
    // `main`, held two of them, 4 MiB of the idle monolith's 31.7 MB); this
    // keeps the kernel from using them where they are on by default.
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("ganglion: cannot disable transparent huge pages: {error}");
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ganglion: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Everything acknowledged is durable by now. Blocking work still
    // running (a Kafka client leaving its group, a metadata request to a
    // broker that is itself stopping) gets a few seconds rather than
    // holding the exit past the orchestrator's grace period.
    runtime.shutdown_timeout(SHUTDOWN_BLOCKING_WAIT);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ganglion: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Monolith);
    if let Command::GenerateConfig = command {
        print!("{}", ganglion_base::Config::example_toml());
        return Ok(());
    }
    let config = ganglion_base::Config::load(cli.config.as_deref())?;
    match command {
        Command::GenerateConfig => Ok(()),
        Command::CheckConfig => {
            println!("configuration ok (server_name {})", config.server_name);
            Ok(())
        }
        Command::Routes => {
            for upstream in wiring::gateway_upstreams(&config)? {
                for path in &upstream.paths {
                    println!("{}\t{path}", upstream.name);
                }
            }
            Ok(())
        }
        Command::GenerateKeys => operator::generate_keys(&config),
        Command::CreateAccount {
            user,
            admin,
            password,
        } => operator::create_account(&config, &user, admin, password).await,
        Command::RegistrationToken { action } => match action {
            TokenAction::Create {
                token,
                uses,
                expires_in_days,
            } => operator::create_token(&config, token, uses, expires_in_days).await,
            TokenAction::List => operator::list_tokens(&config).await,
            TokenAction::Delete { token } => operator::delete_token(&config, &token).await,
        },
        Command::Media { action } => operator::media(&config, action).await,
        Command::Rebuild { service, into } => rebuild::rebuild(config, &service, &into).await,
        Command::Monolith => wiring::monolith(config).await,
        Command::Gateway => wiring::gateway(config).await,
        Command::Clientapi => wiring::service(config, "clientapi").await,
        Command::Roomserver => wiring::service(config, "roomserver").await,
        Command::Syncapi => wiring::service(config, "syncapi").await,
        Command::Userapi => wiring::service(config, "userapi").await,
        Command::Federationapi => wiring::service(config, "federationapi").await,
        Command::Federationsender => wiring::service(config, "federationsender").await,
        Command::Keyserver => wiring::service(config, "keyserver").await,
        Command::Mediaapi => wiring::service(config, "mediaapi").await,
    }
}
