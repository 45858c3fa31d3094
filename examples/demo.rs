//! Demo: three OMEMO 0.3 devices talk through the library, in SQLite stores, with a PEP directory in a
//! temporary folder standing in for the server. Alice has two devices; Bob has one.
//!
//! Run: `cargo run --example demo`

use omemo_muc::{cli::Context, pep_dir::PepDir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("omemo-muc-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pep = PepDir::new(dir.join("pep"));
    let store = |name: &str| dir.join(format!("{name}.sqlite3")).to_string_lossy().into_owned();

    let mut alice_phone = Context::open(&store("alice-phone"), "alice@example.org")?;
    let mut alice_laptop = Context::open(&store("alice-laptop"), "alice@example.org")?;
    let mut bob = Context::open(&store("bob"), "bob@example.org")?;
    for (name, dev) in [("alice (phone)", &mut alice_phone), ("alice (laptop)", &mut alice_laptop), ("bob", &mut bob)] {
        let id = dev.init()?;
        dev.publish(&pep)?;
        println!("{name:15} device {} fingerprint {}", id["device_id"], id["fingerprint"]);
    }

    println!("\n-- alice (phone) writes to bob; her laptop gets a copy --");
    let (stanza, coverage) =
        alice_phone.encrypt(&pep, &["bob@example.org".into()], None, None, "Hi Bob! This is end-to-end encrypted.")?;
    println!("stanza:   {stanza}");
    println!("coverage: {coverage}");
    for (name, dev) in [("bob", &mut bob), ("alice (laptop)", &mut alice_laptop)] {
        let out = dev.decrypt(&pep, &stanza, Some("alice@example.org"))?;
        println!("{name:15} reads {} (key exchange: {})", out["plaintext"], out["kex"]);
    }

    println!("\n-- bob answers, to both of alice's devices --");
    let (stanza, _) = bob.encrypt(&pep, &["alice@example.org".into()], None, None, "Hello Alice, got it.")?;
    for (name, dev) in [("alice (phone)", &mut alice_phone), ("alice (laptop)", &mut alice_laptop)] {
        let out = dev.decrypt(&pep, &stanza, Some("bob@example.org"))?;
        println!("{name:15} reads {} (key exchange: {})", out["plaintext"], out["kex"]);
    }

    println!("\n-- a replayed stanza is refused --");
    match alice_phone.decrypt(&pep, &stanza, Some("bob@example.org")) {
        Ok(_) => println!("accepted (unexpected)"),
        Err(e) => println!("refused: {e}"),
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
