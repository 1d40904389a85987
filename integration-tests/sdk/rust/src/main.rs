//! End-to-end encryption driven by matrix-rust-sdk, as a client developer
//! would use it: two users with two devices each set up cross-signing,
//! verify their own devices and each other, and talk in an encrypted room;
//! one turns on recovery (secret storage and key backup); a third device
//! of hers restores the room keys from the backup and reads the history.
//! With a second homeserver (Synapse), a user there joins, verifies and
//! talks too: encryption across federation.
//!
//! `e2ee-scenario <homeserver URL> [<other homeserver URL> <user> <password>]`
//! where the first homeserver has `alice` and `bob` with passwords
//! `pw-alice-e2ee` and `pw-bob-e2ee`. Exits 0 when every check holds.
#![recursion_limit = "256"]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::encryption::{BackupDownloadStrategy, EncryptionSettings};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{
    OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use matrix_sdk::{Client, Room};

/// A logged-in device and the message bodies it decrypted from sync.
struct Device {
    name: String,
    client: Client,
    user_id: OwnedUserId,
    password: String,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn login(homeserver: &str, user: &str, password: &str, device_id: &str) -> Result<Device> {
    let mut builder = Client::builder()
        .homeserver_url(homeserver)
        .request_config(RequestConfig::new().disable_retry());
    if homeserver.starts_with("https://") {
        // The test Synapse's certificate is self-signed.
        builder = builder.disable_ssl_verification();
    }
    let client = builder
        .with_encryption_settings(EncryptionSettings {
            auto_enable_cross_signing: false,
            backup_download_strategy: BackupDownloadStrategy::Manual,
            auto_enable_backups: false,
        })
        .build()
        .await
        .with_context(|| format!("client for {homeserver}"))?;
    client
        .matrix_auth()
        .login_username(user, password)
        .device_id(device_id)
        .initial_device_display_name(device_id)
        .send()
        .await
        .with_context(|| format!("login {user} {device_id}"))?;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    client.add_event_handler({
        let seen = seen.clone();
        move |event: OriginalSyncRoomMessageEvent| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(event.content.body().to_owned());
            }
        }
    });
    let user_id = client.user_id().context("logged in")?.to_owned();
    // The first sync, then syncing on in the background.
    client
        .sync_once(SyncSettings::default())
        .await
        .with_context(|| format!("first sync of {device_id}"))?;
    let syncing = client.clone();
    tokio::spawn(async move {
        if let Err(error) = syncing
            .sync(SyncSettings::default().timeout(Duration::from_secs(5)))
            .await
        {
            eprintln!("sync stopped: {error}");
        }
    });
    Ok(Device {
        name: format!("{user}/{device_id}"),
        client,
        user_id,
        password: password.to_owned(),
        seen,
    })
}

impl Device {
    /// Sets up cross-signing, giving the password when the server asks
    /// (User-Interactive Auth).
    async fn bootstrap_cross_signing(&self) -> Result<()> {
        let encryption = self.client.encryption();
        if let Err(error) = encryption.bootstrap_cross_signing(None).await {
            let response = error
                .as_uiaa_response()
                .ok_or_else(|| anyhow!("cross-signing of {}: {error}", self.name))?;
            let mut password = uiaa::Password::new(
                uiaa::UserIdentifier::from(&self.user_id),
                self.password.clone(),
            );
            password.session = response.session.clone();
            encryption
                .bootstrap_cross_signing(Some(uiaa::AuthData::Password(password)))
                .await
                .with_context(|| format!("cross-signing of {} with a password", self.name))?;
        }
        let status = encryption
            .cross_signing_status()
            .await
            .context("cross-signing status")?;
        if !status.is_complete() {
            bail!("{}: cross-signing incomplete: {status:?}", self.name);
        }
        println!("{}: cross-signing set up", self.name);
        Ok(())
    }

    /// Signs another device of the same user with the self-signing key.
    async fn verify_own_device(&self, device_id: &str) -> Result<()> {
        let device = until(
            &format!("{} sees device {device_id}", self.name),
            || async {
                self.client
                    .encryption()
                    .get_device(&self.user_id, device_id.into())
                    .await
                    .ok()
                    .flatten()
            },
        )
        .await?;
        device.verify().await.context("signing own device")?;
        until(&format!("{device_id} cross-signed"), || async {
            let device = self
                .client
                .encryption()
                .get_device(&self.user_id, device_id.into())
                .await
                .ok()
                .flatten()?;
            device.is_cross_signed_by_owner().then_some(())
        })
        .await?;
        println!("{}: verified {device_id}", self.name);
        Ok(())
    }

    /// Verifies another user: signs their master key with the
    /// user-signing key, uploaded through `/keys/signatures/upload`.
    async fn verify_user(&self, other: &UserId) -> Result<()> {
        let identity = until(
            &format!("{} sees {other}'s identity", self.name),
            || async {
                self.client
                    .encryption()
                    .request_user_identity(other)
                    .await
                    .ok()
                    .flatten()
            },
        )
        .await?;
        identity
            .verify()
            .await
            .context("signing their master key")?;
        until(&format!("{} trusts {other}", self.name), || async {
            let identity = self
                .client
                .encryption()
                .get_user_identity(other)
                .await
                .ok()
                .flatten()?;
            identity.is_verified().then_some(())
        })
        .await?;
        println!("{}: verified {other}", self.name);
        Ok(())
    }

    async fn room(&self, room_id: &RoomId) -> Result<Room> {
        until(&format!("{} knows {room_id}", self.name), || async {
            self.client.get_room(room_id)
        })
        .await
    }

    async fn join(&self, room_id: &RoomId) -> Result<()> {
        until(&format!("{} invited to {room_id}", self.name), || async {
            self.client.get_room(room_id)
        })
        .await?;
        self.client
            .join_room_by_id(room_id)
            .await
            .with_context(|| format!("{} joins", self.name))?;
        Ok(())
    }

    async fn send(&self, room_id: &RoomId, body: &str) -> Result<()> {
        let room = self.room(room_id).await?;
        room.send(RoomMessageEventContent::text_plain(body))
            .await
            .with_context(|| format!("{} sends {body:?}", self.name))?;
        Ok(())
    }

    /// Waits until this device decrypted `body` from sync.
    async fn sees(&self, body: &str) -> Result<()> {
        until(&format!("{} decrypts {body:?}", self.name), || async {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|seen| seen == body)
                .then_some(())
        })
        .await
    }
}

/// Polls `check` until it answers, for up to 30 seconds.
async fn until<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = check().await {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("timed out: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bodies of the room's messages a device can read with the keys it
/// holds (`/messages`, newest first).
async fn readable_history(room: &Room) -> Result<Vec<String>> {
    let messages = room
        .messages(MessagesOptions::backward())
        .await
        .context("/messages")?;
    Ok(messages
        .chunk
        .iter()
        .filter_map(|event| {
            let json: serde_json::Value = event.raw().deserialize_as().ok()?;
            (json["type"] == "m.room.message")
                .then(|| json["content"]["body"].as_str().map(str::to_owned))
                .flatten()
        })
        .collect())
}

async fn encrypted_room(creator: &Device, invite: Vec<OwnedUserId>) -> Result<OwnedRoomId> {
    let mut request = CreateRoom::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = invite;
    request.initial_state = vec![
        InitialStateEvent::new(
            matrix_sdk::ruma::events::EmptyStateKey,
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = creator
        .client
        .create_room(request)
        .await
        .context("creating the encrypted room")?;
    Ok(room.room_id().to_owned())
}

async fn run(homeserver: &str, other: Option<(String, String, String)>) -> Result<()> {
    let alice1 = login(homeserver, "alice", "pw-alice-e2ee", "ALICE1").await?;
    let alice2 = login(homeserver, "alice", "pw-alice-e2ee", "ALICE2").await?;
    let bob1 = login(homeserver, "bob", "pw-bob-e2ee", "BOB1").await?;
    let bob2 = login(homeserver, "bob", "pw-bob-e2ee", "BOB2").await?;

    // Cross-signing: each user's first device makes the keys and signs the
    // user's second device; then each verifies the other user.
    alice1.bootstrap_cross_signing().await?;
    bob1.bootstrap_cross_signing().await?;
    alice1.verify_own_device("ALICE2").await?;
    bob1.verify_own_device("BOB2").await?;

    // Recovery: secret storage and a key backup, before any room key.
    let recovery_key = alice1
        .client
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await
        .context("enabling recovery")?;
    println!("alice/ALICE1: recovery enabled");

    // An encrypted room; then a conversation every device of both users
    // reads.
    let room_id = encrypted_room(&alice1, vec![bob1.user_id.clone()]).await?;
    bob1.join(&room_id).await?;
    until("bob joined, as alice sees it", || async {
        let room = alice1.client.get_room(&room_id)?;
        let members = room.members(matrix_sdk::RoomMemberships::JOIN).await.ok()?;
        (members.len() == 2).then_some(())
    })
    .await?;
    // Sharing an encrypted room, each tracks the other's keys; verifying
    // the other signs their master key, and the server tells the signer's
    // devices to fetch the keys again (signature included).
    alice1.verify_user(&bob1.user_id).await?;
    bob1.verify_user(&alice1.user_id).await?;
    alice1.send(&room_id, "the first secret").await?;
    for device in [&alice2, &bob1, &bob2] {
        device.sees("the first secret").await?;
    }
    bob2.send(&room_id, "a secret reply").await?;
    for device in [&alice1, &alice2, &bob1] {
        device.sees("a secret reply").await?;
    }
    println!("four devices read the encrypted conversation");
    alice1
        .client
        .encryption()
        .backups()
        .wait_for_steady_state()
        .await
        .context("backing the room keys up")?;
    println!("alice/ALICE1: room keys backed up");

    // A third device of Alice's: no room keys until it recovers them from
    // the backup, then it reads the history.
    let alice3 = login(homeserver, "alice", "pw-alice-e2ee", "ALICE3").await?;
    let room = alice3.room(&room_id).await?;
    let before = readable_history(&room).await?;
    if before.iter().any(|body| body.contains("secret")) {
        bail!("ALICE3 read the history without the backup: {before:?}");
    }
    alice3
        .client
        .encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .context("recovering with the recovery key")?;
    alice3
        .client
        .encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .context("downloading the room's keys from the backup")?;
    let history = until("ALICE3 reads the history", || async {
        let history = readable_history(&room).await.ok()?;
        (history.iter().any(|b| b == "the first secret")
            && history.iter().any(|b| b == "a secret reply"))
        .then_some(history)
    })
    .await?;
    println!("alice/ALICE3 restored the keys and read: {history:?}");
    let status = alice3
        .client
        .encryption()
        .cross_signing_status()
        .await
        .context("ALICE3 cross-signing status")?;
    if !status.is_complete() {
        bail!("ALICE3 did not get the cross-signing keys from secret storage: {status:?}");
    }

    // Across federation: a user of the other server joins, is verified,
    // and reads and writes in the encrypted room.
    if let Some((other_homeserver, user, password)) = other {
        let remote = login(&other_homeserver, &user, &password, "REMOTE1").await?;
        remote.bootstrap_cross_signing().await?;
        let invite = alice1.room(&room_id).await?;
        invite
            .invite_user_by_id(&remote.user_id)
            .await
            .context("inviting the remote user")?;
        remote.join(&room_id).await?;
        until("the remote user joined, as alice sees it", || async {
            let room = alice1.client.get_room(&room_id)?;
            let members = room.members(matrix_sdk::RoomMemberships::JOIN).await.ok()?;
            (members.len() == 3).then_some(())
        })
        .await?;
        alice1.verify_user(&remote.user_id).await?;
        remote.verify_user(&alice1.user_id).await?;
        alice1.send(&room_id, "a secret across servers").await?;
        remote.sees("a secret across servers").await?;
        bob1.sees("a secret across servers").await?;
        remote
            .send(&room_id, "a secret from the other side")
            .await?;
        for device in [&alice1, &alice2, &bob2] {
            device.sees("a secret from the other side").await?;
        }
        println!("{} read and wrote encrypted across federation", remote.name);
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(homeserver) = args.first() else {
        eprintln!("usage: e2ee-scenario <homeserver> [<other homeserver> <user> <password>]");
        std::process::exit(2);
    };
    let other = match &args[1..] {
        [url, user, password] => Some((url.clone(), user.clone(), password.clone())),
        _ => None,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(240), run(homeserver, other)).await;
    match outcome {
        Ok(Ok(())) => println!("e2ee scenario passed"),
        Ok(Err(error)) => {
            eprintln!("e2ee scenario failed: {error:#}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("e2ee scenario timed out");
            std::process::exit(1);
        }
    }
}
