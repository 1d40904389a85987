//! Operator commands: keys and accounts.

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
