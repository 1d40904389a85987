//! The monolith: every service in one process, the embedded log, SQLite.

use ganglion_integration_tests::process::Monolith;

use crate::conversation::{first_conversation, history_forwards, history_via_prev_batch};

#[tokio::test]
async fn two_users_converse_and_paginate_back_to_creation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let (alice, bob, room_id) = first_conversation(&server.base_url, "").await;
    let expected: Vec<String> = (0..3)
        .flat_map(|r| [format!("alice says {r}"), format!("bob says {r}")])
        .collect();
    assert_eq!(history_via_prev_batch(&bob, &room_id).await, expected);
    assert_eq!(history_forwards(&alice, &room_id).await, expected);
}

#[tokio::test]
async fn kill9_mid_conversation_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Monolith::start(dir.path()).await;
    let (alice, bob, room_id) = first_conversation(&server.base_url, "").await;
    let mut expected: Vec<String> = (0..3)
        .flat_map(|r| [format!("alice says {r}"), format!("bob says {r}")])
        .collect();
    // A burst of sends, then SIGKILL right after the last acknowledgement.
    for i in 0..20 {
        let text = format!("burst {i}");
        let reply = alice.send_text(&room_id, &format!("burst{i}"), &text).await;
        assert_eq!(reply.status, 200);
        expected.push(text);
    }
    server.kill9_and_restart().await;
    let after = "after restart".to_owned();
    assert_eq!(bob.send_text(&room_id, "after", &after).await.status, 200);
    expected.push(after);
    let body = alice.sync(None, 0, 100).await;
    let timeline = &body["rooms"]["join"][&room_id]["timeline"]["events"];
    assert_eq!(
        ganglion_integration_tests::client::message_bodies(timeline),
        expected
    );
    assert_eq!(history_forwards(&bob, &room_id).await, expected);
    assert_eq!(history_via_prev_batch(&bob, &room_id).await, expected);
}

#[tokio::test]
async fn memberships_and_their_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::room_apis::memberships_and_their_refusals(&server.base_url).await;
}

#[tokio::test]
async fn aliases_directory_redactions_reports_upgrades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::room_apis::aliases_directory_redactions_reports_upgrades(&server.base_url).await;
}

#[tokio::test]
async fn history_visibility_on_every_read_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::room_apis::history_visibility_on_every_read_path(&server.base_url).await;
}

#[tokio::test]
async fn relations_threads_and_bundles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::room_apis::relations_threads_and_bundles(&server.base_url).await;
}

#[tokio::test]
async fn bad_room_input_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::room_apis::bad_room_input_changes_nothing(&server.base_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_uploads_downloads_and_their_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.extend(crate::media::limits_env());
    let server = Monolith::start_with(dir.path(), env.clone()).await;
    crate::media::uploads_downloads_and_their_limits(&server.base_url, "").await;
    // Nothing is left half written.
    let media = dir.path().join("data/media");
    assert_eq!(
        std::fs::read_dir(media.join("staging"))
            .expect("staging")
            .count(),
        0
    );
    crate::media::operators_quarantine_and_delete(&server.base_url, &env, &media).await;
    crate::media::thumbnails_of_every_format(&server.base_url, "").await;
    crate::media::thumbnails_are_made_at_upload_and_kept(&server.base_url, &media).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_from_before_the_freeze_stays_public() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    // A freeze moment still to come: everything uploaded now is older.
    env.push((
        "GANGLION_MEDIA__UNAUTHENTICATED_BEFORE_MS".to_owned(),
        "4102444800000".to_owned(),
    ));
    let server = Monolith::start_with(dir.path(), env).await;
    crate::media::media_from_before_the_freeze_stays_public(&server.base_url).await;
}

#[tokio::test]
async fn guests_where_guest_access_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.push((
        "GANGLION_CLIENT__GUEST_ACCESS_ENABLED".to_owned(),
        "true".to_owned(),
    ));
    let server = Monolith::start_with(dir.path(), env).await;
    crate::room_apis::guests_where_guest_access_allows(&server.base_url).await;
}

#[tokio::test]
async fn filters_shape_sync_and_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::sync_filters::filters_shape_sync_and_messages(&server.base_url).await;
}

#[tokio::test]
async fn typing_receipts_markers_account_data_presence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::ephemeral::typing_receipts_and_markers(&server.base_url).await;
    crate::ephemeral::account_data_and_tags(&server.base_url).await;
    crate::ephemeral::presence_and_quiet_long_polls(&server.base_url).await;
    crate::ephemeral::notification_counts(&server.base_url).await;
    crate::ephemeral::push_rules(&server.base_url).await;
}

#[tokio::test]
async fn push_rules_and_the_counts_they_decide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::push::push_rules_api(&server.base_url).await;
    crate::push::counts_follow_each_users_rules(&server.base_url).await;
    crate::push::notifications_list(&server.base_url).await;
    crate::push::ignoring_users(&server.base_url).await;
}

#[tokio::test]
async fn full_text_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::search::full_text_search(&server.base_url).await;
}

/// The same with the syncapi's database on PostgreSQL (its tsvector index).
#[tokio::test]
async fn full_text_search_on_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.push((
        "GANGLION_SERVICES__SYNCAPI__DATABASE_URL".to_owned(),
        ganglion_base::testing::scratch_postgres("monolith_search").await,
    ));
    let server = Monolith::start_with(dir.path(), env).await;
    crate::search::full_text_search(&server.base_url).await;
}

#[tokio::test]
async fn key_backups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::key_backup::key_backups(&server.base_url).await;
}

#[tokio::test]
async fn user_directory_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::user_directory::user_directory(&server.base_url).await;
}

#[tokio::test]
async fn dehydrated_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::dehydrated_devices::dehydrated_devices(&server.base_url).await;
}

#[tokio::test]
async fn space_hierarchy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::spaces::space_hierarchy(&server.base_url).await;
}

#[tokio::test]
async fn pushers_and_what_reaches_a_push_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.push((
        "GANGLION_FEDERATION__IP_RANGE_ALLOWLIST".to_owned(),
        r#"["127.0.0.1/32"]"#.to_owned(),
    ));
    let server = Monolith::start_with(dir.path(), env).await;
    crate::push::pushers_and_delivery(&server.base_url).await;
}

#[tokio::test]
async fn to_device_once_across_kill9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Monolith::start(dir.path()).await;
    let (_alice, bob, since) = crate::ephemeral::to_device_once(&server.base_url).await;
    server.kill9_and_restart().await;
    crate::ephemeral::to_device_after_restart(&bob, &since).await;
}

#[tokio::test]
async fn presence_by_inactivity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    for (key, value) in [
        ("GANGLION_CLIENT__PRESENCE_UNAVAILABLE_AFTER_MS", "1000"),
        ("GANGLION_CLIENT__PRESENCE_OFFLINE_AFTER_MS", "3000"),
    ] {
        env.push((key.to_owned(), value.to_owned()));
    }
    let server = Monolith::start_with(dir.path(), env).await;
    crate::ephemeral::presence_by_inactivity(&server.base_url).await;
}

#[tokio::test]
async fn simplified_sliding_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::sliding_sync::lists_windows_and_subscriptions(&server.base_url).await;
    crate::sliding_sync::extensions(&server.base_url).await;
    crate::sliding_sync::refusals(&server.base_url).await;
}

#[tokio::test]
async fn e2ee_keys_upload_query_claim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    crate::e2ee_keys::upload_query_claim(&server.base_url).await;
    crate::e2ee_keys::device_lists(&server.base_url).await;
    crate::e2ee_keys::cross_signing(&server.base_url).await;
}
