//! Operator commands: keys, accounts, registration tokens and media.

use anyhow::{Context, bail};
use ganglion_api::proto::userapi::RegisterRequest;
use ganglion_api::users::UsersApi;
use ganglion_base::Config;

pub(crate) fn generate_keys(config: &Config) -> anyhow::Result<()> {
    let path = ganglion_base::keys::signing_key_path(config);
    if path.exists() {
        bail!(
            "{} already exists; refusing to replace a signing key",
            path.display()
        );
    }
    ganglion_base::keys::generate_signing_key(&path)?;
    let key = ganglion_base::keys::load_signing_key(&path)?;
    let (cert, _) = ganglion_base::keys::load_or_generate_tls(config)?;
    println!(
        "signing key ed25519:{} written to {}",
        key.version,
        path.display()
    );
    println!("federation certificate at {}", cert.display());
    Ok(())
}

pub(crate) async fn create_account(
    config: &Config,
    user: &str,
    admin: bool,
    password: Option<String>,
) -> anyhow::Result<()> {
    let localpart = match user.strip_prefix('@') {
        Some(rest) => match rest.rsplit_once(':') {
            Some((localpart, server)) if server == config.server_name => localpart,
            _ => bail!("{user} is not a user of {}", config.server_name),
        },
        None => user,
    };
    let password = password
        .or_else(|| std::env::var("GANGLION_PASSWORD").ok())
        .context("give --password or set GANGLION_PASSWORD")?;
    let userapi = ganglion_userapi::start(config, None).await?;
    let session = userapi
        .api
        .register(RegisterRequest {
            localpart: localpart.to_owned(),
            password,
            inhibit_login: true,
            admin,
            ..Default::default()
        })
        .await?;
    println!(
        "created {}{}",
        session.user_id,
        if admin { " (admin)" } else { "" }
    );
    Ok(())
}

pub(crate) async fn create_token(
    config: &Config,
    token: Option<String>,
    uses: Option<i64>,
    expires_in_days: Option<u32>,
) -> anyhow::Result<()> {
    if uses.is_some_and(|n| n < 1) {
        bail!("--uses must be at least 1");
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let expiry_ms = expires_in_days.map(|days| now_ms + i64::from(days) * 86_400_000);
    let userapi = ganglion_userapi::start(config, None).await?;
    let token = userapi
        .api
        .create_registration_token(token.as_deref(), uses, expiry_ms)
        .await?;
    println!("{token}");
    Ok(())
}

pub(crate) async fn list_tokens(config: &Config) -> anyhow::Result<()> {
    let userapi = ganglion_userapi::start(config, None).await?;
    for (token, allowed, used, expiry_ms) in userapi.api.registration_tokens().await? {
        let allowed = allowed.map_or("unlimited".to_owned(), |n| n.to_string());
        let expiry = expiry_ms.map_or("never".to_owned(), |ms| format!("{ms} ms since the epoch"));
        println!("{token}\tused {used} of {allowed}\texpires {expiry}");
    }
    Ok(())
}

pub(crate) async fn delete_token(config: &Config, token: &str) -> anyhow::Result<()> {
    let userapi = ganglion_userapi::start(config, None).await?;
    if !userapi.api.delete_registration_token(token).await? {
        bail!("no registration token {token}");
    }
    println!("deleted {token}");
    Ok(())
}

pub(crate) async fn media(config: &Config, action: crate::MediaAction) -> anyhow::Result<()> {
    use crate::MediaAction;
    use ganglion_mediaapi::operator::{MediaAdmin, Target};
    let args = match &action {
        MediaAction::Quarantine(args)
        | MediaAction::Unquarantine(args)
        | MediaAction::Delete(args) => args,
    };
    let targets = match &args.room {
        Some(room_id) => {
            anyhow::ensure!(
                args.mxc.is_none() && args.user.is_none(),
                "give one mxc:// URI, --user or --room"
            );
            ganglion_base::limits::room_id(room_id)
                .map_err(|_| anyhow::anyhow!("{room_id} is not a room ID"))?;
            ganglion_syncapi::operator::media_in_room(config, room_id)
                .await?
                .iter()
                .filter_map(|uri| Target::parse(Some(uri), None).ok())
                .collect()
        }
        None => vec![Target::parse(args.mxc.as_deref(), args.user.as_deref())?],
    };
    let admin = MediaAdmin::open(config).await?;
    let (mut media, mut blobs) = (0, 0);
    for target in &targets {
        match action {
            MediaAction::Quarantine(_) => media += admin.quarantine(target, true).await?,
            MediaAction::Unquarantine(_) => media += admin.quarantine(target, false).await?,
            MediaAction::Delete(_) => {
                let (rows, files) = admin.delete(target).await?;
                media += rows;
                blobs += files;
            }
        }
    }
    match action {
        MediaAction::Quarantine(_) => println!("quarantined {media}"),
        MediaAction::Unquarantine(_) => println!("released {media}"),
        MediaAction::Delete(_) => println!("deleted {media} media and {blobs} files"),
    }
    Ok(())
}
