//! How the services are put together: all in one process (monolith) or one
//! per process, meeting over gRPC and Kafka (polylith).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use ganglion_api::federation::{FederationClient, FederationGrpc, FederationHandle};
use ganglion_api::keys::{KeysClient, KeysGrpc, KeysHandle};
use ganglion_api::replicas::ReplicaSet;
use ganglion_api::roomserver::{RoomserverClient, RoomserverGrpc, RoomserverHandle};
use ganglion_api::sync::{SyncGrpc, SyncHandle, SyncReplicas};
use ganglion_api::users::{UsersClient, UsersGrpc, UsersHandle};
use ganglion_base::config::{Durability, LogBackend};
use ganglion_base::health::Health;
use ganglion_base::internal_auth::InternalSecret;
use ganglion_base::shutdown::{Draining, Shutdown};
use ganglion_base::{Config, http};
use ganglion_log::{EmbeddedConfig, EmbeddedLog, KafkaConfig, KafkaLog, Log};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) fn open_log(config: &Config, client_id: &str) -> anyhow::Result<Arc<dyn Log>> {
    Ok(match config.log.backend {
        LogBackend::Embedded => Arc::new(
            EmbeddedLog::open_with(
                config.embedded_log_dir(),
                EmbeddedConfig {
                    fsync: config.durability == Durability::Fsync,
                    unflushed_topics: ganglion_api::topics::Topics::new(&config.log.topic_prefix)
                        .awaited_requests(),
                },
            )
            .context("opening the embedded log")?,
        ),
        LogBackend::Kafka => {
            let mut kafka = KafkaConfig::new(config.log.kafka_brokers.clone());
            kafka.client_id = format!("ganglion-{client_id}");
            kafka.replication_factor = config.log.kafka_replication_factor;
            kafka.fetch_wait_max_ms = config.log.kafka_fetch_wait_max_ms;
            kafka.properties = config.log.kafka_properties()?;
            Arc::new(KafkaLog::new(kafka).context("connecting to Kafka")?)
        }
    })
}

/// The drain delay of a process (see [`ganglion_base::shutdown`]).
fn drain_delay(config: &Config, polylith: bool) -> std::time::Duration {
    let default = if polylith { 2_000 } else { 0 };
    std::time::Duration::from_millis(config.operator.drain_delay_ms.unwrap_or(default))
}

pub(crate) fn telemetry(
    config: &Config,
    name: &str,
) -> anyhow::Result<ganglion_base::telemetry::TelemetryGuard> {
    Ok(ganglion_base::telemetry::init(&config.telemetry, name)?)
}

/// Every service in one process: the embedded log, SQLite, one listener for
/// clients, one TLS listener for federation and the operator listener
/// (health and metrics). No internal gRPC is served.
pub(crate) async fn monolith(config: Config) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let _telemetry = telemetry(&config, "monolith")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let signing_key = Arc::new(ganglion_base::keys::load_or_generate_signing_key(&config)?);
    let (cert, key) = ganglion_base::keys::load_or_generate_tls(&config)?;
    let log = open_log(&config, "monolith")?;
    let stopping = Shutdown::on_signal(drain_delay(&config, false));
    let shutdown = stopping.consumers();

    let mut userapi = ganglion_userapi::start(&config, Some(log.clone())).await?;
    userapi
        .run_push(&config, log.clone(), shutdown.clone())
        .await?;
    let users: UsersHandle = userapi.api.clone();
    let keyserver = ganglion_keyserver::start(&config, log.clone(), shutdown.clone()).await?;
    let keys: KeysHandle = keyserver.api.clone();
    let roomserver = ganglion_roomserver::start(
        &config,
        log.clone(),
        signing_key.clone(),
        "local".to_owned(),
        InternalSecret::ephemeral(),
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
    let mediaapi = ganglion_mediaapi::start(&config, users.clone(), federation.clone()).await?;
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
    health.extend(mediaapi.health);
    health.add(Arc::new(Draining(stopping.draining())));
    stop_long_polls_when_draining(&stopping, syncapi.api.clone());
    // Media streams its bodies, past the client API's body limit.
    let client_router = http::split_by_path(
        http::matrix_router(
            clientapi.routes.merge(syncapi.routes),
            "client",
            config.client.max_body_bytes,
        ),
        ganglion_mediaapi::serves,
        http::streaming_router(mediaapi.routes.clone(), "mediaapi"),
    );
    // Other servers fetch media here too (the federation media API, and
    // the deprecated downloads for servers without it).
    let federation_router = http::split_by_path(
        http::matrix_router(
            federationapi.routes,
            "federation",
            config.federation.max_body_bytes,
        ),
        ganglion_mediaapi::serves,
        http::streaming_router(mediaapi.routes.clone(), "mediaapi"),
    );

    let client_listener = bind(config.client.listen).await?;
    let federation_listener = bind(config.federation.listen).await?;
    let operator_listener = bind(config.operator.listen).await?;
    tracing::info!(
        client = %client_listener.local_addr()?,
        federation = %federation_listener.local_addr()?,
        operator = %operator_listener.local_addr()?,
        server_name = %config.server_name,
        startup_ms = started_at.elapsed().as_millis() as u64,
        "ganglion monolith serving"
    );
    let federation = tokio::spawn(serve_tls_until(
        federation_listener,
        federation_router,
        cert,
        key,
        config.federation.listener_limits(),
        stopping.listeners(),
    ));
    let operator = tokio::spawn(serve_until(
        operator_listener,
        health.router(),
        http::ListenerLimits::INTERNAL,
        stopping.listeners(),
    ));
    http::serve(
        client_listener,
        client_router,
        config.client.listener_limits(),
        stopping.listeners_closing(),
    )
    .await?;
    let _ = federation.await;
    let _ = operator.await;
    stopping.stop_consumers();
    Ok(())
}

/// Long-polls answer as soon as the process starts to drain.
fn stop_long_polls_when_draining(stopping: &Shutdown, syncapi: Arc<ganglion_syncapi::SyncService>) {
    let mut draining = stopping.draining();
    tokio::spawn(async move {
        if draining.wait_for(|d| *d).await.is_ok() {
            syncapi.stop_long_polls();
        }
    });
}

async fn bind(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))
}

/// Serves `router` on `listener` until `shutdown` says stop.
async fn serve_until(
    listener: TcpListener,
    router: Router,
    limits: http::ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    http::serve(listener, router, limits, async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await
}

/// Serves `router` over TLS on `listener` until `shutdown` says stop.
async fn serve_tls_until(
    listener: TcpListener,
    router: Router,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    limits: http::ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    http::serve_tls(listener, router, &cert, &key, limits, async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await
}

/// The replicas of `service` as this process reaches them, their
/// readiness probed from now on.
pub(crate) fn replicas(config: &Config, service: &'static str) -> anyhow::Result<Arc<ReplicaSet>> {
    let listed = config.service_replicas(service);
    anyhow::ensure!(
        !listed.is_empty(),
        "services.{service}: no address, listen or replicas"
    );
    let set = ReplicaSet::new(service, listed);
    set.spawn_probes();
    Ok(set)
}

/// The services behind the gateway, each with the routes it exports.
pub(crate) fn gateway_upstreams(
    config: &Config,
) -> anyhow::Result<Vec<ganglion_gateway::Upstream>> {
    // How an upstream's bodies go: read whole up to a limit, or streamed
    // (the mediaapi's, bounded by the largest upload).
    enum Bodies {
        Whole(usize),
        Streamed(usize),
    }
    let upstream = |name: &'static str, routing, paths, bodies: Bodies| -> anyhow::Result<_> {
        let set = replicas(config, name)?;
        for i in 0..set.len() {
            anyhow::ensure!(
                set.get(i).is_some_and(|r| r.config.http_address.is_some()),
                "services.{name}: a replica without http_listen or http_address"
            );
        }
        Ok(ganglion_gateway::Upstream {
            name,
            replicas: set,
            routing,
            paths,
            max_body_bytes: match bodies {
                Bodies::Whole(limit) | Bodies::Streamed(limit) => limit,
            },
            streams_bodies: matches!(bodies, Bodies::Streamed(_)),
        })
    };
    use ganglion_gateway::Routing;
    Ok(vec![
        upstream(
            "clientapi",
            Routing::Spread,
            ganglion_clientapi::route_paths(),
            Bodies::Whole(config.client.max_body_bytes),
        )?,
        upstream(
            "syncapi",
            Routing::ByUser,
            ganglion_syncapi::route_paths(),
            Bodies::Whole(config.client.max_body_bytes),
        )?,
        upstream(
            "federationapi",
            Routing::Spread,
            ganglion_federationapi::route_paths(),
            Bodies::Whole(config.federation.max_body_bytes),
        )?,
        upstream(
            "mediaapi",
            Routing::Spread,
            ganglion_mediaapi::route_paths(),
            Bodies::Streamed(usize::try_from(config.media.max_upload_bytes).unwrap_or(usize::MAX)),
        )?,
    ])
}

/// The polylith's HTTP edge: clients and remote servers on the client
/// listener, health and metrics on the operator listener.
pub(crate) async fn gateway(config: Config) -> anyhow::Result<()> {
    let _telemetry = telemetry(&config, "gateway")?;
    let secret = InternalSecret::load_or_generate(&config).context("the internal secret")?;
    let upstreams = gateway_upstreams(&config)?;
    let sets: Vec<Arc<ReplicaSet>> = upstreams.iter().map(|u| u.replicas.clone()).collect();
    // Users are placed on the replicas found ready, so the first ones are
    // not all sent to a replica that is still catching up.
    for set in &sets {
        set.wait_probed(std::time::Duration::from_secs(2)).await;
    }
    let tokens = ganglion_gateway::TokenUsers::new(
        Some(users_client(&config, &secret)?),
        config.caches.gateway_tokens,
    );
    let router = ganglion_gateway::router(upstreams, tokens)?;
    let mut health = Health::default();
    health.add(Arc::new(ganglion_gateway::UpstreamsReady(sets)));
    let stopping = Shutdown::on_signal(drain_delay(&config, true));
    health.add(Arc::new(Draining(stopping.draining())));
    let listener = bind(config.client.listen).await?;
    let operator_listener = bind(config.operator.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        operator = %operator_listener.local_addr()?,
        "ganglion gateway serving"
    );
    let operator = tokio::spawn(serve_until(
        operator_listener,
        health.router(),
        http::ListenerLimits::INTERNAL,
        stopping.listeners(),
    ));
    http::serve(
        listener,
        router,
        config.client.listener_limits(),
        stopping.listeners_closing(),
    )
    .await?;
    let _ = operator.await;
    Ok(())
}

pub(crate) fn keys_client(config: &Config, secret: &InternalSecret) -> anyhow::Result<KeysHandle> {
    Ok(Arc::new(KeysClient::replicated(
        replicas(config, "keyserver")?,
        secret.clone(),
    )?))
}

pub(crate) fn federation_client(
    config: &Config,
    secret: &InternalSecret,
) -> anyhow::Result<FederationHandle> {
    Ok(Arc::new(FederationClient::replicated(
        replicas(config, "federationapi")?,
        secret.clone(),
    )?))
}

pub(crate) fn users_client(
    config: &Config,
    secret: &InternalSecret,
) -> anyhow::Result<UsersHandle> {
    Ok(Arc::new(UsersClient::replicated(
        replicas(config, "userapi")?,
        secret.clone(),
    )?))
}

pub(crate) fn roomserver_client(
    config: &Config,
    secret: &InternalSecret,
) -> anyhow::Result<RoomserverHandle> {
    Ok(Arc::new(RoomserverClient::replicated(
        replicas(config, "roomserver")?,
        secret.clone(),
    )?))
}

/// One service in its own process, on three listeners kept apart by trust:
/// its internal gRPC API (`listen`, every call authenticated with the
/// internal secret), its public HTTP routes for the gateway (`http_listen`,
/// for the services that have any) and `/healthz`, `/readyz`, `/metrics`
/// (`operator_listen`).
pub(crate) async fn service(config: Config, name: &'static str) -> anyhow::Result<()> {
    let _telemetry = telemetry(&config, name)?;
    let section = config.service(name);
    let listen = section
        .listen
        .with_context(|| format!("services.{name}.listen is required"))?;
    let operator_listen = section
        .operator_listen
        .with_context(|| format!("services.{name}.operator_listen is required"))?;
    let secret = InternalSecret::load_or_generate(&config).context("the internal secret")?;
    let stopping = Shutdown::on_signal(drain_delay(&config, true));
    let shutdown = stopping.consumers();
    let mut health = Health::default();
    health.add(Arc::new(Draining(stopping.draining())));
    let mut grpc = tonic::service::Routes::default();
    let mut http_routes: Option<Router> = None;
    // Whether the routes stream their bodies (no limit read ahead): the
    // mediaapi's.
    let mut streams_bodies = false;
    let mut tls_listener = None;
    match name {
        "userapi" => {
            let log = open_log(&config, name)?;
            let mut started = ganglion_userapi::start(&config, Some(log.clone())).await?;
            started.run_push(&config, log, shutdown.clone()).await?;
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
            let started = ganglion_roomserver::start(
                &config,
                log,
                signing_key,
                reply_to,
                secret.clone(),
                shutdown.clone(),
            )
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
                users_client(&config, &secret)?,
                keys_client(&config, &secret)?,
                federation_client(&config, &secret)?,
                &replica,
                shutdown.clone(),
            )
            .await?;
            health.extend(started.health);
            stop_long_polls_when_draining(&stopping, started.api.clone());
            grpc = grpc.add_service(SyncGrpc::service(started.api));
            http_routes = Some(started.routes);
        }
        "clientapi" => {
            let rooms = roomserver_client(&config, &secret)?;
            // Read-your-writes waits on the replica that serves the user.
            let sync: SyncHandle = Arc::new(SyncReplicas::new(
                replicas(&config, "syncapi")?,
                secret.clone(),
            )?);
            let federation = federation_client(&config, &secret)?;
            let started = ganglion_clientapi::start(
                &config,
                ganglion_clientapi::Peers {
                    users: users_client(&config, &secret)?,
                    roomserver: rooms,
                    sync,
                    keys: keys_client(&config, &secret)?,
                    federation,
                    log: open_log(&config, name)?,
                },
            )
            .await?;
            health.extend(started.health);
            http_routes = Some(started.routes);
        }
        "federationapi" => {
            let signing_key = Arc::new(ganglion_base::keys::load_or_generate_signing_key(&config)?);
            let (cert, key) = ganglion_base::keys::load_or_generate_tls(&config)?;
            let rooms = roomserver_client(&config, &secret)?;
            let started = ganglion_federationapi::start(
                &config,
                signing_key,
                ganglion_federationapi::Peers {
                    roomserver: rooms,
                    keys: keys_client(&config, &secret)?,
                    users: users_client(&config, &secret)?,
                },
                open_log(&config, name)?,
            )
            .await?;
            health.extend(started.health);
            grpc = grpc.add_service(FederationGrpc::service(started.api));
            // The gateway forwards federation paths to the HTTP listener;
            // remote servers may also come in on the TLS listener.
            http_routes = Some(started.routes.clone());
            let router = http::matrix_router(
                started.routes,
                "federation",
                config.federation.max_body_bytes,
            );
            let listener = bind(config.federation.listen).await?;
            tls_listener = Some(tokio::spawn(serve_tls_until(
                listener,
                router,
                cert,
                key,
                config.federation.listener_limits(),
                stopping.listeners(),
            )));
        }
        "federationsender" => {
            let federation = federation_client(&config, &secret)?;
            let started = ganglion_federationsender::start(
                &config,
                open_log(&config, name)?,
                federation,
                shutdown.clone(),
            )
            .await?;
            health.extend(started.health);
        }
        "mediaapi" => {
            let started = ganglion_mediaapi::start(
                &config,
                users_client(&config, &secret)?,
                federation_client(&config, &secret)?,
            )
            .await?;
            health.extend(started.health);
            http_routes = Some(started.routes);
            streams_bodies = true;
        }
        _ => anyhow::bail!("unknown service {name}"),
    }
    // tonic's router brings a fallback of its own; ours (M_UNRECOGNIZED) replaces it.
    let grpc_router = ganglion_base::internal_auth::require(
        http::matrix_router(grpc.into_axum_router(), name, GRPC_MAX_MESSAGE_BYTES),
        secret,
        name,
    );
    let grpc_listener = bind(listen).await?;
    let operator_listener = bind(operator_listen).await?;
    let mut tasks: Vec<_> = tls_listener.into_iter().collect();
    if let Some(routes) = http_routes {
        let http_listen = section
            .http_listen
            .with_context(|| format!("services.{name}.http_listen is required"))?;
        let (max_body_bytes, limits) = if name == "federationapi" {
            (
                config.federation.max_body_bytes,
                config.federation.listener_limits(),
            )
        } else {
            (
                config.client.max_body_bytes,
                config.client.listener_limits(),
            )
        };
        let router = if streams_bodies {
            http::streaming_router(routes, name)
        } else {
            http::matrix_router(routes, name, max_body_bytes)
        };
        let http_listener = bind(http_listen).await?;
        tracing::info!(service = name, http = %http_listener.local_addr()?, "serving HTTP routes");
        tasks.push(tokio::spawn(serve_until(
            http_listener,
            router,
            limits,
            stopping.listeners(),
        )));
    }
    tracing::info!(
        service = name,
        grpc = %grpc_listener.local_addr()?,
        operator = %operator_listener.local_addr()?,
        "ganglion service serving"
    );
    tasks.push(tokio::spawn(serve_until(
        operator_listener,
        health.router(),
        http::ListenerLimits::INTERNAL,
        stopping.listeners(),
    )));
    http::serve(
        grpc_listener,
        grpc_router,
        http::ListenerLimits::INTERNAL,
        stopping.listeners_closing(),
    )
    .await?;
    for task in tasks {
        let _ = task.await;
    }
    stopping.stop_consumers();
    Ok(())
}

/// The largest gRPC request a service takes (a join's outliers travel in
/// one call).
const GRPC_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    /// The services' route tables fit together: no path is exported twice
    /// and every pattern is one the gateway's router takes.
    #[test]
    fn the_gateway_takes_every_exported_route() {
        let config = ganglion_base::Config::default();
        let upstreams = super::gateway_upstreams(&config).expect("upstreams");
        assert!(upstreams.iter().all(|u| !u.paths.is_empty()));
        let _router =
            ganglion_gateway::router(upstreams, ganglion_gateway::TokenUsers::new(None, 10))
                .expect("a router");
    }
}
