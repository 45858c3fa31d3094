//! The async driver over the in-process server: every stanza crosses the server as XML, as it would a
//! real one. A private group is created from a 1:1 chat, invitations arrive encrypted and are
//! accepted, messages go both ways in both namespaces, a member catches up from the archive after a
//! restart from its SQLite file, a banned member gets no key in the next message, and publishing copes
//! with servers that refuse publish-options.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use omemo_muc::{
    driver::{Config, Event, OmemoMuc, Source},
    fan_out_encryptor::group::{Cause, GroupOptions, MissingDevicePolicy},
    local::LocalServer,
    session_store::{MemoryStore, Namespace, NamespaceSet, SqliteStore},
};
use tokio::sync::mpsc::UnboundedReceiver;

const MUC: &str = "conference.localhost";

fn config(ns: NamespaceSet) -> Config {
    let mut c = Config::new(MUC);
    c.namespaces = ns;
    c.iq_timeout = Duration::from_secs(10);
    c
}

fn best_effort() -> GroupOptions {
    GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() }
}

/// The next event that `pick` accepts, within ten seconds; other events are skipped.
async fn next<T>(rx: &mut UnboundedReceiver<Event>, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                if let Some(t) = pick(&e) {
                    return t;
                }
            }
            Ok(None) => panic!("{what}: the driver stopped"),
            Err(_) => panic!("{what}: nothing within 10 s"),
        }
    }
}

fn text_of(e: &Event) -> Option<(String, String, Source, Namespace)> {
    match e {
        Event::Message(m) => Some((m.from_jid.clone(), m.text.clone(), m.source, m.namespace)),
        _ => None,
    }
}

/// Every event now queued (waits briefly for stragglers); events that never stop coming fail the test.
async fn drain(rx: &mut UnboundedReceiver<Event>) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        out.push(e);
        assert!(tokio::time::Instant::now() < deadline && out.len() < 10_000, "events never stop: {out:?}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_group_invitations_messages_ban_and_catch_up() {
    let server = LocalServer::new(MUC);
    let dir = std::env::temp_dir().join(format!("omemo-muc-driver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bob_db = dir.join("bob.sqlite3");
    let _ = std::fs::remove_file(&bob_db);

    let (alice, mut alice_rx, _) = OmemoMuc::start(
        server.connect("alice@localhost/phone").unwrap(),
        MemoryStore::default(),
        config(NamespaceSet::BOTH),
    )
    .await
    .unwrap();
    let (bob, mut bob_rx, _) = OmemoMuc::start(
        server.connect("bob@localhost/laptop").unwrap(),
        SqliteStore::open(&bob_db).unwrap(),
        config(NamespaceSet::OLDMEMO),
    )
    .await
    .unwrap();
    let (carol, mut carol_rx, _) = OmemoMuc::start(
        server.connect("carol@localhost/tablet").unwrap(),
        MemoryStore::default(),
        config(NamespaceSet::TWOMEMO),
    )
    .await
    .unwrap();

    // Alice turns her chat with Bob and Carol into a private group.
    let created =
        alice.create_group(&["bob@localhost".into(), "carol@localhost".into()], "alice", Some("plans")).await.unwrap();
    let room = created.group.room.clone();
    assert!(created.group.archiving);
    assert_eq!(created.group.members, vec!["bob@localhost".to_owned(), "carol@localhost".to_owned()]);
    for (who, result) in &created.invited {
        assert_eq!(result.as_ref().ok(), Some(&1), "invitation to {who}");
    }

    // The invitations arrive encrypted; the room they name is the one created.
    for (rx, name) in [(&mut bob_rx, "bob"), (&mut carol_rx, "carol")] {
        let inv = next(rx, name, |e| match e {
            Event::Invitation { invitation, from } if from.starts_with("alice@localhost") => Some(invitation.clone()),
            _ => None,
        })
        .await;
        assert_eq!(inv.room, room);
        assert!(inv.encrypted, "{name}: the invitation travelled encrypted");
    }
    assert_eq!(bob.join(&room, "bob").await.unwrap(), 0);
    assert_eq!(carol.join(&room, "carol").await.unwrap(), 0);

    // Alice writes: one stanza, both namespaces; the reflection comes back to her. The invitations
    // carried the key exchanges, and Bob and Carol answered them (session completion): no key exchange
    // is repeated in the group message.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = alice.send_confirmed(&room, "hello both", Duration::from_secs(10)).await.unwrap();
    assert_eq!(sent.coverage.keyed.len(), 2, "{:?}", sent.coverage);
    assert!(sent.coverage.keyed.iter().all(|(_, kex)| !kex), "{:?}", sent.coverage);
    assert!(sent.stanza_id.is_some());
    let (from, text, source, ns) = next(&mut bob_rx, "bob reads", text_of).await;
    assert_eq!(
        (from.as_str(), text.as_str(), source, ns),
        ("alice@localhost", "hello both", Source::Live, Namespace::Oldmemo)
    );
    let (_, text, _, ns) = next(&mut carol_rx, "carol reads", text_of).await;
    assert_eq!((text.as_str(), ns), ("hello both", Namespace::Twomemo));

    // Bob speaks 0.3 only and Carol OMEMO 2 only: Bob cannot reach her. By default the send is refused
    // with her name; Bob's client is set to best-effort, so it goes to Alice and the report names Carol.
    let refused = bob.send(&room, "hi from bob").await.unwrap_err();
    assert!(refused.to_string().contains("carol@localhost"), "{refused}");
    let sent = bob.send_confirmed_with(&room, "hi from bob", best_effort(), Duration::from_secs(10)).await.unwrap();
    assert_eq!(sent.coverage.members_left_out.len(), 1, "{:?}", sent.coverage);
    assert_eq!(sent.coverage.members_left_out[0].0, "carol@localhost");
    let (from, text, _, ns) = next(&mut alice_rx, "alice reads bob", text_of).await;
    assert_eq!((from.as_str(), text.as_str(), ns), ("bob@localhost", "hi from bob", Namespace::Oldmemo));
    let cause = next(&mut carol_rx, "carol cannot read bob", |e| match e {
        Event::Undecryptable { cause, from_jid, .. } => Some((cause.clone(), from_jid.clone())),
        _ => None,
    })
    .await;
    assert_eq!(cause, (Cause::NotForThisDevice, Some("bob@localhost".to_owned())));

    // Bob goes offline; the room goes on without him.
    bob.close().await;
    drop(bob);
    drop(bob_rx);
    alice.send_confirmed(&room, "while bob is away 1", Duration::from_secs(10)).await.unwrap();
    alice.send_confirmed(&room, "while bob is away 2", Duration::from_secs(10)).await.unwrap();

    // Bob restarts from his SQLite file and catches up from the archive: only what he has not seen.
    let (bob, mut bob_rx, published) = OmemoMuc::start(
        server.connect("bob@localhost/laptop").unwrap(),
        SqliteStore::open(&bob_db).unwrap(),
        config(NamespaceSet::OLDMEMO),
    )
    .await
    .unwrap();
    assert_eq!(published.moved_from, None);
    bob.join(&room, "bob").await.unwrap();
    let events = drain(&mut bob_rx).await;
    let texts: Vec<(String, Source)> = events.iter().filter_map(text_of).map(|(_, t, s, _)| (t, s)).collect();
    assert_eq!(
        texts,
        vec![("while bob is away 1".to_owned(), Source::Archive), ("while bob is away 2".to_owned(), Source::Archive)],
        "{events:?}"
    );
    // Bob's own message and what he read before are in the archive too: seen, so not reported again.
    assert!(!events.iter().any(|e| matches!(e, Event::Reflection { .. } | Event::Undecryptable { .. })), "{events:?}");

    // Carol is banned: she is out of the room, and the very next message has no key for her.
    alice.ban(&room, "carol@localhost").await.unwrap();
    next(&mut carol_rx, "carol banned", |e| match e {
        Event::Room { change: omemo_muc::driver::RoomChange::Left(why), .. } => Some(*why),
        _ => None,
    })
    .await;
    let sent = alice.send_confirmed(&room, "after the ban", Duration::from_secs(10)).await.unwrap();
    assert!(sent.coverage.keyed.iter().all(|(a, _)| a.jid != "carol@localhost"), "{:?}", sent.coverage);
    assert!(sent.coverage.keyed.iter().any(|(a, _)| a.jid == "bob@localhost"));
    let (_, text, source, _) = next(&mut bob_rx, "bob reads after ban", text_of).await;
    assert_eq!((text.as_str(), source), ("after the ban", Source::Live));
    // And Carol cannot come back.
    assert!(carol.join(&room, "carol").await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_copes_with_node_configuration_and_ejabberd() {
    let server = LocalServer::new(MUC);
    // An older client of Frank's made his 0.3 device-list node with presence access: our publish-options
    // (open access) contradict it, and the server answers precondition-not-met.
    let old_node: minidom::Element = "<iq xmlns='jabber:client' type='set' id='old'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
        <publish node='eu.siacs.conversations.axolotl.devicelist'><item id='current'><list xmlns='eu.siacs.conversations.axolotl'/></item></publish>\
        <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
        <field var='pubsub#access_model'><value>presence</value></field></x></publish-options></pubsub></iq>"
        .parse()
        .unwrap();
    server.with_hub(|h| {
        let out = h.handle("frank@localhost/old", old_node);
        assert!(out.iter().all(|(_, e)| e.attr("type") != Some("error")));
        // And the server is ejabberd: no max_items publish-option, and the first node creation fails.
        h.refuse_max_items_option = true;
        h.fail_node_creations = 1;
    });
    let (frank, _rx, published) = OmemoMuc::start(
        server.connect("frank@localhost/new").unwrap(),
        MemoryStore::default(),
        config(NamespaceSet::BOTH),
    )
    .await
    .unwrap();
    assert!(published.retries >= 1, "{published:?}");
    assert!(
        published.configured_nodes.iter().any(|n| n == "eu.siacs.conversations.axolotl.devicelist"),
        "{published:?}"
    );
    // The OMEMO 2 bundles node is configured for many items after a publish without the option.
    assert!(published.configured_nodes.iter().any(|n| n == "urn:xmpp:omemo:2:bundles"), "{published:?}");
    // A second device of the same account gets its own bundle item next to the first, and both are
    // fetchable by others.
    let (second, _rx2, p2) = OmemoMuc::start(
        server.connect("frank@localhost/second").unwrap(),
        MemoryStore::default(),
        config(NamespaceSet::TWOMEMO),
    )
    .await
    .unwrap();
    assert_ne!(p2.device_id, published.device_id);
    let (gina, _rx3, _) = OmemoMuc::start(
        server.connect("gina@localhost/x").unwrap(),
        MemoryStore::default(),
        config(NamespaceSet::TWOMEMO),
    )
    .await
    .unwrap();
    gina.refresh_device_lists(&["frank@localhost".into()]).await.unwrap();
    let list = gina
        .with_store(|s| {
            use omemo_muc::session_store::DeviceListStore;
            s.device_list(Namespace::Twomemo, "frank@localhost").unwrap().unwrap_or_default()
        })
        .await
        .unwrap();
    assert_eq!(list.len(), 2, "both devices listed: {list:?}");
    for device in list {
        let bundle = server.with_hub(|h| {
            let iq: minidom::Element = format!("<iq xmlns='jabber:client' type='get' id='b' to='frank@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:omemo:2:bundles'><item id='{device}'/></items></pubsub></iq>").parse().unwrap();
            h.handle("gina@localhost/x", iq)
        });
        assert_eq!(bundle[0].1.attr("type"), Some("result"), "bundle of {device}");
    }
    drop((frank, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_are_shared_time_out_and_back_off() {
    use omemo_muc::{fan_out_encryptor::group::Left, session_store::AccountStore};
    let server = LocalServer::new(MUC);
    let mut cfg = config(NamespaceSet::BOTH);
    cfg.iq_timeout = Duration::from_millis(300);
    cfg.bundle_backoff = Duration::from_secs(60);
    let (alice, _arx, _) =
        OmemoMuc::start(server.connect("alice@localhost/a").unwrap(), MemoryStore::default(), cfg).await.unwrap();
    let (bob, mut brx, _) = OmemoMuc::start(
        server.connect("bob@localhost/b").unwrap(),
        MemoryStore::default(),
        config(NamespaceSet::OLDMEMO),
    )
    .await
    .unwrap();
    let items = |s: &LocalServer| s.with_hub(|h| h.iq_counts.get("pubsub items").copied().unwrap_or(0));

    // Two callers want Bob's device lists at once: one fetch per node, shared.
    // Bob's server is slow: both requests are under way when the answers come.
    let before = items(&server);
    let bob_jid = vec!["bob@localhost".to_owned()];
    server.hold("bob@localhost");
    let (a, b, released) =
        tokio::join!(alice.refresh_device_lists(&bob_jid), alice.refresh_device_lists(&bob_jid), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            server.release("bob@localhost")
        });
    a.unwrap();
    b.unwrap();
    assert_eq!(released, 2, "one fetch per namespace, not per caller");
    assert_eq!(items(&server) - before, 2);

    // Bob's list also names a device that never published a bundle (one that went away).
    let bob_id = bob.with_store(|s| s.account().unwrap().unwrap().device_id).await.unwrap();
    let list = omemo_muc::fan_out_encryptor::xml::pep::publish_device_list(
        Namespace::Oldmemo,
        "bob@localhost",
        &[bob_id, 4242],
        "l",
    )
    .unwrap();
    server.with_hub(|h| h.handle("bob@localhost/b", list));
    alice.refresh_device_lists(&bob_jid).await.unwrap();
    let created = alice.create_group(&bob_jid, "alice", None).await.unwrap();
    assert_eq!(created.invited[0].1.as_ref().ok(), Some(&1), "{:?}", created.invited);
    let room = created.group.room;
    next(&mut brx, "invitation", |e| matches!(e, Event::Invitation { .. }).then_some(())).await;
    bob.join(&room, "bob").await.unwrap();
    // An invitee without any OMEMO device gets nothing (not even in plaintext), and the error says why.
    let nobody = alice.create_group(&["dave@localhost".into()], "alice", None).await.unwrap();
    let why = nobody.invited[0].1.as_ref().unwrap_err();
    assert_eq!(why, "no device of dave@localhost can get the invitation: no OMEMO device published or known");
    // The failed device is not asked again until its back-off has passed.
    let before = items(&server);
    let sent = alice.send_with(&room, "hello", best_effort()).await.unwrap();
    assert_eq!(items(&server), before, "no bundle fetched again");
    let gone = sent.coverage.devices_left_out.iter().find(|(a, _)| a.device == 4242).unwrap();
    assert!(matches!(&gone.1, Left::NoBundle(why) if why.contains("backing off after 1 failed")), "{gone:?}");
    assert!(sent.coverage.keyed.iter().any(|(a, _)| a.device == bob_id));

    // A peer whose server never answers: the fetch gives up after the IQ timeout, and nothing changes.
    server.with_hub(|h| h.silent.insert("carol@localhost".into()));
    let started = std::time::Instant::now();
    alice.refresh_device_lists(&["carol@localhost".into()]).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let list = alice
        .with_store(|s| {
            use omemo_muc::session_store::DeviceListStore;
            s.device_list(Namespace::Twomemo, "carol@localhost").unwrap()
        })
        .await
        .unwrap();
    assert_eq!(list, None);
    // A fetch whose caller gave up (its future dropped mid-flight) leaves nothing behind: once her
    // server answers again, the next fetch of the same list is made and answered.
    let carol = ["carol@localhost".to_owned()];
    let gave_up = tokio::time::timeout(Duration::from_millis(200), alice.refresh_device_lists(&carol)).await;
    assert!(gave_up.is_err(), "the server is silent: the caller gives up first");
    server.with_hub(|h| h.silent.remove("carol@localhost"));
    let again = tokio::time::timeout(Duration::from_secs(5), alice.refresh_device_lists(&carol)).await;
    again.expect("a fetch after one given up is answered").unwrap();
    server.with_hub(|h| h.silent.insert("carol@localhost".into()));
    // Inviting her: nothing is sent, and the error names the fetches that failed.
    let silent = alice.create_group(&["carol@localhost".into()], "alice", None).await.unwrap();
    let why = silent.invited[0].1.as_ref().unwrap_err();
    assert!(why.contains("device list of carol@localhost: no answer"), "{why}");
}

/// An IQ whose caller-chosen id is already waiting for its answer is refused (the two answers could
/// not be told apart); once the first is answered, the id is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iq_id_already_waiting_is_refused() {
    use omemo_muc::driver::DriverError;
    let server = LocalServer::new(MUC);
    let (alice, _arx, _) = OmemoMuc::start(
        server.connect("alice@localhost/a").unwrap(),
        MemoryStore::default(),
        config(NamespaceSet::BOTH),
    )
    .await
    .unwrap();
    let iq = || -> minidom::Element {
        "<iq xmlns='jabber:client' type='get' to='bob@localhost' id='mine'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            .parse()
            .unwrap()
    };
    // Bob's answers are held: the first IQ waits while the second is asked (join! polls in order, so
    // the first has put its id in place before the second starts).
    server.hold("bob@localhost");
    let (first, second) = tokio::join!(alice.iq(iq()), async {
        let second = alice.iq(iq()).await;
        assert_eq!(server.release("bob@localhost"), 1, "only the first went out");
        second
    });
    assert!(matches!(second, Err(DriverError::IdInUse(ref id)) if id == "mine"), "{second:?}");
    assert_eq!(first.unwrap().attr("id"), Some("mine"));
    // Answered: the id is free again.
    assert_eq!(alice.iq(iq()).await.unwrap().attr("id"), Some("mine"));
}
