//! Properties of the recipient set, over many random rooms (seeded, so failures reproduce):
//! - it does not depend on the order in which equivalent information arrives;
//! - an outcast is never included; a member who left the room stays included; our JID always is;
//! - `none` and `outcast` take effect at once, whichever source says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use minidom::Element;
use participant_resolver::*;
use rand_chacha::{
    rand_core::{RngCore, SeedableRng},
    ChaCha20Rng,
};

const ROOM: &str = "room@muc.example.org";
const ME: &str = "me@example.org";
const CASES: u64 = 300;
const SHUFFLES: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Presence {
    Absent,
    Present,
    Left,
}

#[derive(Debug, Clone)]
struct Person {
    jid: String,
    nick: String,
    affiliation: Affiliation,
    presence: Presence,
}

fn el(s: &str) -> Element {
    s.parse().unwrap()
}

fn presence(p: &Person, unavailable: bool, codes: &[u16]) -> Element {
    let t = if unavailable { " type='unavailable'" } else { "" };
    let role = if unavailable { "none" } else { "participant" };
    let status: String = codes.iter().map(|c| format!("<status code='{c}'/>")).collect();
    el(&format!(
        "<presence xmlns='jabber:client' from='{ROOM}/{}'{t}><x xmlns='http://jabber.org/protocol/muc#user'>{status}\
         <item jid='{}/res' affiliation='{}' role='{role}'/></x></presence>",
        p.nick,
        p.jid,
        p.affiliation.as_str()
    ))
}

fn affiliation_message(jid: &str, a: Affiliation) -> Element {
    el(&format!(
        "<message xmlns='jabber:client' from='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'>\
         <item jid='{jid}' affiliation='{}'/></x></message>",
        a.as_str()
    ))
}

fn list(a: Affiliation, people: &[Person]) -> Element {
    let items: String = people
        .iter()
        .filter(|p| p.affiliation == a)
        .map(|p| format!("<item jid='{}' affiliation='{}'/>", p.jid, a.as_str()))
        .collect();
    el(&format!(
        "<iq xmlns='jabber:client' type='result' from='{ROOM}' id='x'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>"
    ))
}

fn random_room(rng: &mut ChaCha20Rng) -> Vec<Person> {
    let n = 1 + rng.next_u32() as usize % 25;
    (0..n)
        .map(|i| {
            let affiliation = [
                Affiliation::Owner,
                Affiliation::Admin,
                Affiliation::Member,
                Affiliation::Member,
                Affiliation::None,
                Affiliation::Outcast,
            ][rng.next_u32() as usize % 6];
            let presence = if affiliation.is_member() {
                [Presence::Absent, Presence::Present, Presence::Left][rng.next_u32() as usize % 3]
            } else {
                Presence::Absent
            };
            Person { jid: format!("user{i}@example.org"), nick: format!("nick{i}"), affiliation, presence }
        })
        .collect()
}

/// Equivalent pieces of information about the room, each a sequence that stays in order (a join and the
/// later leave of one occupant); the pieces may come in any order.
fn units(people: &[Person]) -> Vec<Vec<Element>> {
    let me = Person { jid: ME.into(), nick: "me".into(), affiliation: Affiliation::Owner, presence: Presence::Present };
    let mut out = vec![
        vec![presence(&me, false, &[110])],
        vec![el(&format!(
            "<iq xmlns='jabber:client' type='result' from='{ROOM}' id='d'><query xmlns='http://jabber.org/protocol/disco#info'>\
             <feature var='muc_nonanonymous'/><feature var='muc_membersonly'/></query></iq>"
        ))],
    ];
    for a in [Affiliation::Owner, Affiliation::Admin, Affiliation::Member] {
        out.push(vec![list(a, people)]);
    }
    for p in people {
        match (p.affiliation, p.presence) {
            (Affiliation::Outcast | Affiliation::None, _) => out.push(vec![affiliation_message(&p.jid, p.affiliation)]),
            (_, Presence::Present) => out.push(vec![presence(p, false, &[])]),
            (_, Presence::Left) => out.push(vec![presence(p, false, &[]), presence(p, true, &[])]),
            (_, Presence::Absent) => {}
        }
    }
    out
}

fn shuffle<T>(v: &mut [T], rng: &mut ChaCha20Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.next_u32() as usize % (i + 1);
        v.swap(i, j);
    }
}

fn build(units: &[Vec<Element>]) -> Room {
    let mut room = Room::new(ROOM, ME, Policy::default());
    for unit in units {
        for stanza in unit {
            room.apply_captured(stanza).unwrap();
        }
    }
    room
}

#[test]
fn recipients_do_not_depend_on_arrival_order() {
    for case in 0..CASES {
        let mut rng = ChaCha20Rng::seed_from_u64(case);
        let people = random_room(&mut rng);
        let mut u = units(&people);
        let reference = build(&u).recipients().unwrap_or_else(|e| panic!("case {case}: {e}"));
        for _ in 0..SHUFFLES {
            shuffle(&mut u, &mut rng);
            let again = build(&u).recipients().unwrap();
            assert_eq!(again, reference, "case {case}: order changed the answer");
        }
        // The invariants, on the answer every order gives.
        assert!(reference.included.contains(ME), "case {case}: our JID");
        // The borrowed form: the same JIDs, sorted and each once (a send and attribution search it).
        let room = build(&u);
        let borrowed = room.recipient_jids().unwrap().included;
        assert!(borrowed.windows(2).all(|w| w[0] < w[1]), "case {case}: not in order: {borrowed:?}");
        assert!(borrowed.iter().copied().eq(reference.included.iter().map(String::as_str)), "case {case}");
        for p in &people {
            let included = reference.included.contains(&p.jid);
            match p.affiliation {
                Affiliation::Outcast => {
                    assert!(!included, "case {case}: outcast {} included", p.jid);
                    assert!(reference.excluded.contains(&(p.jid.clone(), Exclusion::Outcast)));
                }
                Affiliation::None => assert!(!included, "case {case}: non-member {} included", p.jid),
                _ => assert!(included, "case {case}: member {} ({:?}) left out", p.jid, p.presence),
            }
        }
    }
}

#[test]
fn none_and_outcast_take_effect_from_any_source() {
    for case in 0..CASES {
        let mut rng = ChaCha20Rng::seed_from_u64(10_000 + case);
        let people = random_room(&mut rng);
        let Some(victim) = people.iter().find(|p| p.affiliation.is_member()).cloned() else { continue };
        let new = if rng.next_u32() % 2 == 0 { Affiliation::None } else { Affiliation::Outcast };
        let mut room = build(&units(&people));
        assert!(room.recipients().unwrap().included.contains(&victim.jid));
        let changed = Person { affiliation: new, ..victim.clone() };
        let stanza = match rng.next_u32() % 3 {
            // The room's message about someone's affiliation.
            0 => affiliation_message(&victim.jid, new),
            // A list answer that now names them with the new affiliation.
            1 => el(&format!(
                "<iq xmlns='jabber:client' type='result' from='{ROOM}' id='x'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                 <item jid='{}' affiliation='{}'/></query></iq>",
                victim.jid,
                new.as_str()
            )),
            // Their removal from the room (321 affiliation change, 301 ban).
            _ => presence(&changed, true, if new == Affiliation::Outcast { &[301] } else { &[321] }),
        };
        room.apply_captured(&stanza).unwrap();
        let r = room.recipients().unwrap();
        assert!(!r.included.contains(&victim.jid), "case {case}: {new:?} via {stanza:?} kept {}", victim.jid);
        let reason = if new == Affiliation::Outcast { Exclusion::Outcast } else { Exclusion::NoLongerMember };
        assert!(r.excluded.contains(&(victim.jid.clone(), reason)), "case {case}");
    }
}

#[test]
fn kicks_and_leaves_keep_members() {
    for case in 0..CASES {
        let mut rng = ChaCha20Rng::seed_from_u64(20_000 + case);
        let people = random_room(&mut rng);
        let mut room = build(&units(&people));
        for p in people.iter().filter(|p| p.presence == Presence::Present) {
            let codes: &[u16] = if rng.next_u32() % 2 == 0 { &[307] } else { &[] };
            room.apply_captured(&presence(p, true, codes)).unwrap();
            assert!(room.recipients().unwrap().included.contains(&p.jid), "case {case}: {} after {codes:?}", p.jid);
        }
    }
}
