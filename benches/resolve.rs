//! participant-resolver benchmarks: the recipient set of a 5,000-member room, and applying one presence
//! to it.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use minidom::Element;
use participant_resolver::{Policy, Room};

const ROOM: &str = "big@muc.example.org";
const MEMBERS: usize = 5_000;

#[allow(clippy::unwrap_used)]
fn big_room() -> Room {
    let mut room = Room::new(ROOM, "me@example.org", Policy::default());
    let own: Element = format!(
        "<presence xmlns='jabber:client' from='{ROOM}/me'><x xmlns='http://jabber.org/protocol/muc#user'>\
         <status code='110'/><item jid='me@example.org/r' affiliation='owner' role='moderator'/></x></presence>"
    )
    .parse()
    .unwrap();
    room.apply_captured(&own).unwrap();
    let disco: Element = format!(
        "<iq xmlns='jabber:client' type='result' from='{ROOM}' id='d'><query xmlns='http://jabber.org/protocol/disco#info'>\
         <feature var='muc_nonanonymous'/><feature var='muc_membersonly'/></query></iq>"
    )
    .parse()
    .unwrap();
    room.apply_captured(&disco).unwrap();
    let items: String =
        (0..MEMBERS).map(|i| format!("<item jid='user{i}@example.org' affiliation='member'/>")).collect();
    let list: Element = format!(
        "<iq xmlns='jabber:client' type='result' from='{ROOM}' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>"
    )
    .parse()
    .unwrap();
    room.apply_captured(&list).unwrap();
    // A tenth of the members are in the room.
    for i in (0..MEMBERS).step_by(10) {
        room.apply_captured(&presence(i, false)).unwrap();
    }
    room
}

#[allow(clippy::unwrap_used)]
fn presence(i: usize, unavailable: bool) -> Element {
    let t = if unavailable { " type='unavailable'" } else { "" };
    format!(
        "<presence xmlns='jabber:client' from='{ROOM}/nick{i}'{t}><occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid{i}'/>\
         <x xmlns='http://jabber.org/protocol/muc#user'><item jid='user{i}@example.org/r' affiliation='member' role='participant'/></x></presence>"
    )
    .parse()
    .unwrap()
}

#[allow(clippy::unwrap_used)]
fn benches(c: &mut Criterion) {
    let room = big_room();
    assert_eq!(room.recipients().unwrap().included.len(), MEMBERS + 1);
    let mut g = c.benchmark_group("resolve");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("recipients/5000", |b| b.iter(|| room.recipients().unwrap()));
    g.throughput(Throughput::Elements(1));
    let join = presence(1, false);
    g.bench_function("apply_presence/5000", |b| {
        b.iter_batched(
            || room.clone(),
            |mut r| {
                let events = r.handle_presence(&join).unwrap();
                (r, events) // dropped outside the measurement
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(resolve, benches);
criterion_main!(resolve);
