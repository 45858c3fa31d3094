//! Offline: three devices talk through the library, in SQLite stores, with a PEP directory in a temporary
//! folder standing in for the server. Alice's phone speaks both OMEMO namespaces, her laptop only OMEMO
//! 0.3 (like Conversations or Dino), Bob's client only OMEMO 2 (like Kaidan): one stanza carries both
//! `<encrypted>` elements, and every device reads the one meant for it.
//!
//! Run: `cargo run --example offline_pep`

use omemo_muc::{cli::Context, fan_out_encryptor::NamespaceChoice, pep_dir::PepDir, session_store::NamespaceSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("omemo-muc-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pep = PepDir::new(dir.join("pep"));
    let store = |name: &str| dir.join(format!("{name}.sqlite3")).to_string_lossy().into_owned();

    let mut alice_phone = Context::open(&store("alice-phone"), "alice@example.org")?;
    let mut alice_laptop = Context::open(&store("alice-laptop"), "alice@example.org")?;
    let mut bob = Context::open(&store("bob"), "bob@example.org")?;
    for (name, dev, ns) in [
        ("alice (phone)", &mut alice_phone, NamespaceSet::BOTH),
        ("alice (laptop)", &mut alice_laptop, NamespaceSet::OLDMEMO),
        ("bob", &mut bob, NamespaceSet::TWOMEMO),
    ] {
        let id = dev.init(ns)?;
        dev.publish(&pep)?;
        println!("{name:15} device {} speaks {} fingerprint {}", id["device_id"], id["namespaces"], id["fingerprint"]);
    }

    println!("\n-- alice (phone) writes to bob; her laptop gets a copy --");
    let (stanza, coverage) = alice_phone.encrypt(
        &pep,
        &["bob@example.org".into()],
        None,
        None,
        "Hi Bob! This is end-to-end encrypted.",
        NamespaceChoice::Auto,
    )?;
    println!("stanza:   {stanza}");
    println!("coverage: {coverage}");
    for (name, dev) in [("bob", &mut bob), ("alice (laptop)", &mut alice_laptop)] {
        let out = dev.decrypt(&pep, &stanza, Some("alice@example.org"))?;
        println!("{name:15} reads {} ({}, key exchange: {})", out["plaintext"], out["namespace"], out["kex"]);
    }

    println!("\n-- bob answers in OMEMO 2: only alice's phone can read it --");
    let (stanza, coverage) =
        bob.encrypt(&pep, &["alice@example.org".into()], None, None, "Hello Alice, got it.", NamespaceChoice::Auto)?;
    println!("coverage: {coverage}");
    let out = alice_phone.decrypt(&pep, &stanza, Some("bob@example.org"))?;
    println!("alice (phone)   reads {} ({}, key exchange: {})", out["plaintext"], out["namespace"], out["kex"]);
    match alice_laptop.decrypt(&pep, &stanza, Some("bob@example.org")) {
        Ok(_) => println!("alice (laptop)  read it (unexpected)"),
        Err(e) => println!("alice (laptop)  cannot: {e}"),
    }

    println!("\n-- a replayed stanza is refused --");
    match alice_phone.decrypt(&pep, &stanza, Some("bob@example.org")) {
        Ok(_) => println!("accepted (unexpected)"),
        Err(e) => println!("refused: {e}"),
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
