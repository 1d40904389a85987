//! How the services are put together: all in one process (monolith) or one
//! per process, meeting over gRPC and Kafka (polylith).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use ganglion_api::federation::{FederationClient, FederationGrpc, FederationHandle};
use ganglion_api::keys::{KeysClient, KeysGrpc, KeysHandle};
use ganglion_api::roomserver::{RoomserverClient, RoomserverGrpc, RoomserverHandle};
use ganglion_api::sync::{SyncClient, SyncGrpc, SyncHandle};
use ganglion_api::users::{UsersClient, UsersGrpc, UsersHandle};
use ganglion_base::config::LogBackend;
use ganglion_base::health::Health;
use ganglion_base::{Config, http};
use ganglion_log::{EmbeddedLog, KafkaConfig, KafkaLog, Log};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn open_log(config: &Config, client_id: &str) -> anyhow::Result<Arc<dyn Log>> {
    Ok(match config.log.backend {
        LogBackend::Embedded => Arc::new(
            EmbeddedLog::open(config.embedded_log_dir()).context("opening the embedded log")?,
        ),
        LogBackend::Kafka => {
            let mut kafka = KafkaConfig::new(config.log.kafka_brokers.clone());
            kafka.client_id = format!("ganglion-{client_id}");
            kafka.replication_factor = config.log.kafka_replication_factor;
            kafka.fetch_wait_max_ms = config.log.kafka_fetch_wait_max_ms;
            Arc::new(KafkaLog::new(kafka).context("connecting to Kafka")?)
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM, and tells the consumers to stop.
fn shutdown_signal() -> (
    watch::Receiver<bool>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (sender, receiver) = watch::channel(false);
    let mut waiter = receiver.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        let _ = sender.send(true);
    });
    let future = async move {
        let _ = waiter.wait_for(|stop| *stop).await;
    };
    (receiver, future)
}

fn telemetry(
    config: &Config,
    name: &str,
) -> anyhow::Result<ganglion_base::telemetry::TelemetryGuard> {
    Ok(ganglion_base::telemetry::init(&config.telemetry, name)?)
}

/// Every service in one process: the embedded log, SQLite, one listener for
/// clients and one TLS listener for federation.
pub(crate) async fn monolith(config: Config) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let _telemetry = telemetry(&config, "monolith")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let signing_key = Arc::new(ganglion_base::keys::load_or_generate_signing_key(&config)?);
    let (cert, key) = ganglion_base::keys::load_or_generate_tls(&config)?;
    let log = open_log(&config, "monolith")?;
    let (shutdown, shutdown_future) = shutdown_signal();

    let userapi = ganglion_userapi::start(&config, Some(log.clone())).await?;
    let users: UsersHandle = userapi.api.clone();
    let keyserver = ganglion_keyserver::start(&config, log.clone(), shutdown.clone()).await?;
    let keys: KeysHandle = keyserver.api.clone();
    let roomserver = ganglion_roomserver::start(
        &config,
        log.clone(),
        signing_key.clone(),
        "local".to_owned(),
        shutdown.clone(),
    )
    .await?;
    let rooms: RoomserverHandle = roomserver.api.clone();
    let federationapi = ganglion_federationapi::start(
        &config,
        signing_key.clone(),
        ganglion_federationapi::Peers {
            roomserver: rooms.clone(),
            keys: keys.clone(),
            users: users.clone(),
        },
        log.clone(),
    )
    .await?;
    let federation: FederationHandle = federationapi.api.clone();
    let syncapi = ganglion_syncapi::start(
        &config,
        log.clone(),
        users.clone(),
        keys.clone(),
        federation.clone(),
        "monolith",
        shutdown.clone(),
    )
    .await?;
    let sync: SyncHandle = syncapi.api.clone();
    let federationsender = ganglion_federationsender::start(
        &config,
        log.clone(),
        federation.clone(),
        shutdown.clone(),
    )
    .await?;
    let clientapi = ganglion_clientapi::start(
        &config,
        ganglion_clientapi::Peers {
            users,
            roomserver: rooms,
            sync,
            keys,
            federation,
            log: log.clone(),
        },
    )
    .await?;

    let mut health = Health::default();
    health.extend(userapi.health);
    health.extend(keyserver.health);
    health.extend(roomserver.health);
    health.extend(syncapi.health);
    health.extend(clientapi.health);
    health.extend(federationapi.health);
    health.extend(federationsender.health);
    let client_router = http::matrix_router(
        clientapi.routes.merge(syncapi.routes),
        "client",
        config.client.max_body_bytes,
    )
    .merge(health.router());
    let federation_router = http::matrix_router(
        federationapi.routes,
        "federation",
        config.client.max_body_bytes,
    );

    let client_listener = TcpListener::bind(config.client.listen)
        .await
        .with_context(|| format!("binding {}", config.client.listen))?;
    let federation_listener = TcpListener::bind(config.federation.listen)
        .await
        .with_context(|| format!("binding {}", config.federation.listen))?;
    tracing::info!(
        client = %client_listener.local_addr()?,
        federation = %federation_listener.local_addr()?,
        server_name = %config.server_name,
        startup_ms = started_at.elapsed().as_millis() as u64,
        "ganglion monolith serving"
    );
    let federation_shutdown = {
        let mut receiver = shutdown.clone();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    };
    let federation = tokio::spawn(async move {
        http::serve_tls(
            federation_listener,
            federation_router,
            &cert,
            &key,
            federation_shutdown,
        )
        .await
    });
    http::serve(client_listener, client_router, shutdown_future).await?;
    federation.abort();
    Ok(())
}

/// The polylith's HTTP edge.
pub(crate) async fn gateway(config: Config) -> anyhow::Result<()> {
    let _telemetry = telemetry(&config, "gateway")?;
    let address = |service: &str| {
        config
            .service_address(service)
            .with_context(|| format!("services.{service}: no address"))
    };
    let upstreams = ganglion_gateway::Upstreams {
        clientapi: address("clientapi")?,
        syncapi: address("syncapi")?,
        federationapi: address("federationapi")?,
    };
    let (_shutdown, shutdown_future) = shutdown_signal();
    let router = ganglion_gateway::router(upstreams).merge(Health::default().router());
    let listener = TcpListener::bind(config.client.listen)
        .await
        .with_context(|| format!("binding {}", config.client.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "ganglion gateway serving");
    http::serve(listener, router, shutdown_future).await?;
    Ok(())
}

fn keys_client(config: &Config) -> anyhow::Result<KeysHandle> {
    let address = config
        .service_address("keyserver")
        .context("services.keyserver: no address")?;
    Ok(Arc::new(KeysClient::new(&address)?))
}

fn federation_client(config: &Config) -> anyhow::Result<FederationHandle> {
    let address = config
        .service_address("federationapi")
        .context("services.federationapi: no address")?;
    Ok(Arc::new(FederationClient::new(&address)?))
}

fn users_client(config: &Config) -> anyhow::Result<UsersHandle> {
    let address = config
        .service_address("userapi")
        .context("services.userapi: no address")?;
    Ok(Arc::new(UsersClient::new(&address)?))
}

/// One service in its own process: its gRPC API, its HTTP routes (if any),
/// `/healthz`, `/readyz` and `/metrics`, all on the service's `listen` address.
pub(crate) async fn service(config: Config, name: &'static str) -> anyhow::Result<()> {
    let _telemetry = telemetry(&config, name)?;
    let section = config.service(name);
    let listen = section
        .listen
        .with_context(|| format!("services.{name}.listen is required"))?;
    let (shutdown, shutdown_future) = shutdown_signal();
    let mut health = Health::default();
    let mut grpc = tonic::service::Routes::default();
    let mut http_routes = Router::new();
    match name {
        "userapi" => {
            let started = ganglion_userapi::start(&config, Some(open_log(&config, name)?)).await?;
            health.extend(started.health);
            grpc = grpc.add_service(UsersGrpc::service(started.api));
        }
        "keyserver" => {
            let started =
                ganglion_keyserver::start(&config, open_log(&config, name)?, shutdown.clone())
                    .await?;
            health.extend(started.health);
            grpc = grpc.add_service(KeysGrpc::service(started.api));
        }
        "roomserver" => {
            let log = open_log(&config, name)?;
            let signing_key = Arc::new(ganglion_base::keys::load_or_generate_signing_key(&config)?);
            let reply_to = config
                .service_address(name)
                .context("services.roomserver: no address")?;
            let started =
                ganglion_roomserver::start(&config, log, signing_key, reply_to, shutdown.clone())
                    .await?;
            health.extend(started.health);
            grpc = grpc.add_service(RoomserverGrpc::service(started.api));
        }
        "syncapi" => {
            let log = open_log(&config, name)?;
            let replica = section
                .replica_id
                .clone()
                .unwrap_or_else(|| listen.to_string().replace([':', '.', '[', ']'], "-"));
            let started = ganglion_syncapi::start(
                &config,
                log,
                users_client(&config)?,
                keys_client(&config)?,
                federation_client(&config)?,
                &replica,
                shutdown.clone(),
            )
            .await?;
            health.extend(started.health);
            grpc = grpc.add_service(SyncGrpc::service(started.api));
            http_routes = started.routes;
        }
        "clientapi" => {
            let rooms: RoomserverHandle = Arc::new(RoomserverClient::new(
                &config
                    .service_address("roomserver")
                    .context("services.roomserver: no address")?,
            )?);
            let sync: SyncHandle = Arc::new(SyncClient::new(
                &config
                    .service_address("syncapi")
                    .context("services.syncapi: no address")?,
            )?);
            let federation = federation_client(&config)?;
            let started = ganglion_clientapi::start(
                &config,
                ganglion_clientapi::Peers {
                    users: users_client(&config)?,
                    roomserver: rooms,
                    sync,
                    keys: keys_client(&config)?,
                    federation,
                    log: open_log(&config, name)?,
                },
            )
            .await?;
            health.extend(started.health);
            http_routes = started.routes;
        }
        "federationapi" => {
            let signing_key = Arc::new(ganglion_base::keys::load_or_generate_signing_key(&config)?);
            let (cert, key) = ganglion_base::keys::load_or_generate_tls(&config)?;
            let rooms: RoomserverHandle = Arc::new(RoomserverClient::new(
                &config
                    .service_address("roomserver")
                    .context("services.roomserver: no address")?,
            )?);
            let started = ganglion_federationapi::start(
                &config,
                signing_key,
                ganglion_federationapi::Peers {
                    roomserver: rooms,
                    keys: keys_client(&config)?,
                    users: users_client(&config)?,
                },
                open_log(&config, name)?,
            )
            .await?;
            health.extend(started.health);
            grpc = grpc.add_service(FederationGrpc::service(started.api));
            // The gateway forwards federation paths here over plain HTTP;
            // remote servers come in on the TLS listener.
            http_routes = started.routes.clone();
            let router =
                http::matrix_router(started.routes, "federation", config.client.max_body_bytes);
            let listener = TcpListener::bind(config.federation.listen).await?;
            let mut receiver = shutdown.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = receiver.wait_for(|s| *s).await;
                };
                http::serve_tls(listener, router, &cert, &key, stop).await
            });
        }
        "federationsender" => {
            let federation = federation_client(&config)?;
            let started = ganglion_federationsender::start(
                &config,
                open_log(&config, name)?,
                federation,
                shutdown.clone(),
            )
            .await?;
            health.extend(started.health);
        }
        // Its work arrives with a later issue; the process already serves health.
        _ => {}
    }
    // tonic's router brings a fallback of its own; ours (M_UNRECOGNIZED) replaces it.
    let router = http::matrix_router(
        grpc.into_axum_router().merge(http_routes),
        name,
        config.client.max_body_bytes,
    )
    .merge(health.router());
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(service = name, listen = %listener.local_addr()?, "ganglion service serving");
    http::serve(listener, router, shutdown_future).await?;
    Ok(())
}
