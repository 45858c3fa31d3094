//! What a client needs: connect, join a room, send, receive. Here the connection is the in-process
//! server (`omemo_muc::local`); a client passes its own XMPP connection as a `driver::Connection`
//! instead (any type implementing `driver::Transport`, plus the stream of incoming stanzas).
//!
//! Run: `cargo run --example client`

use std::time::Duration;

use omemo_muc::{
    driver::{Config, Event, OmemoMuc},
    local::LocalServer,
    session_store::{MemoryStore, SqliteStore},
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = LocalServer::new("conference.localhost");
    let store_path = std::env::temp_dir().join(format!("omemo-muc-example-{}.sqlite3", std::process::id()));

    // 1. Connect: the driver creates the device if the store has none and publishes its keys.
    let (alice, _alice_events, _) = OmemoMuc::start(
        server.connect("alice@localhost/laptop")?,
        SqliteStore::open(&store_path)?,
        Config::new("conference.localhost"),
    )
    .await?;
    let (bob, mut bob_events, _) = OmemoMuc::start(
        server.connect("bob@localhost/phone")?,
        MemoryStore::default(),
        Config::new("conference.localhost"),
    )
    .await?;

    // 2. A private group (members-only, non-anonymous, archived) with Bob; he accepts the invitation.
    let room = alice.create_group(&["bob@localhost".into()], "alice", None).await?.group.room;
    while let Some(event) = bob_events.recv().await {
        if let Event::Invitation { invitation, .. } = event {
            bob.join(&invitation.room, "bob").await?;
            break;
        }
    }

    // 3. Send: encrypted for every member device; the coverage report says who got a key.
    let sent = alice.send_confirmed(&room, "Hello Bob!", Duration::from_secs(5)).await?;
    println!("sent to {} device(s)", sent.coverage.keyed.len());

    // 4. Receive: decrypted messages (and reflections, undecryptable ones with a cause ...) as events.
    while let Some(event) = bob_events.recv().await {
        if let Event::Message(m) = event {
            println!("bob reads from {} ({:?}, device {}): {}", m.from_jid, m.namespace, m.device, m.text);
            break;
        }
    }
    let _ = std::fs::remove_file(&store_path);
    Ok(())
}
