//! OMEMO 2 (`urn:xmpp:omemo:2`) elements, defined with the same `xso` derives `xmpp-parsers` uses.

use minidom::Element;
use session_store::{keys::ed25519_to_curve25519, DeviceId, PreKeyBundle, PublicKey};
use xso::{text::Base64, AsXml, FromXml};

use super::{invalid, strip_base64_whitespace};
use crate::error::XmlError;

/// The namespace.
pub const NS: &str = "urn:xmpp:omemo:2";
/// The device list PEP node (one item, id `current`).
pub const DEVICES_NODE: &str = "urn:xmpp:omemo:2:devices";
/// The bundles PEP node (one item per device, item id = device id; `max_items=max`).
pub const BUNDLES_NODE: &str = "urn:xmpp:omemo:2:bundles";

/// `<device id label? labelsig?>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "device")]
pub struct Device {
    /// Device id.
    #[xml(attribute)]
    pub id: u32,
    /// Optional label.
    #[xml(attribute(default))]
    pub label: Option<String>,
    /// Signature of the label (base64), not checked here.
    #[xml(attribute(default))]
    pub labelsig: Option<String>,
}

/// `<devices>`: the device list.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "devices")]
pub struct Devices {
    /// The devices.
    #[xml(child(n = ..))]
    pub devices: Vec<Device>,
}

/// `<spk id>`: the signed pre-key.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "spk")]
pub struct Spk {
    /// Id.
    #[xml(attribute)]
    pub id: u32,
    /// Raw 32-byte X25519 key.
    #[xml(text = Base64)]
    pub data: Vec<u8>,
}

/// `<spks>`: its signature.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "spks")]
pub struct Spks {
    /// Ed25519 signature.
    #[xml(text = Base64)]
    pub data: Vec<u8>,
}

/// `<ik>`: the identity key (Ed25519).
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "ik")]
pub struct Ik {
    /// 32-byte Ed25519 key.
    #[xml(text = Base64)]
    pub data: Vec<u8>,
}

/// `<pk id>`: a one-time pre-key.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "pk")]
pub struct Pk {
    /// Id.
    #[xml(attribute)]
    pub id: u32,
    /// Raw 32-byte X25519 key.
    #[xml(text = Base64)]
    pub data: Vec<u8>,
}

/// `<prekeys>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "prekeys")]
pub struct Prekeys {
    /// The pre-keys.
    #[xml(child(n = ..))]
    pub keys: Vec<Pk>,
}

/// `<bundle>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "bundle")]
pub struct Bundle {
    /// Signed pre-key.
    #[xml(child)]
    pub spk: Spk,
    /// Its signature.
    #[xml(child)]
    pub spks: Spks,
    /// Identity key.
    #[xml(child)]
    pub ik: Ik,
    /// One-time pre-keys.
    #[xml(child)]
    pub prekeys: Prekeys,
}

/// `<key rid kex?>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "key")]
pub struct Key {
    /// Recipient device.
    #[xml(attribute)]
    pub rid: u32,
    /// `true` (or `1`) on a key exchange; written only when true.
    #[xml(attribute(default))]
    pub kex: Option<bool>,
    /// OMEMOKeyExchange or OMEMOAuthenticatedMessage.
    #[xml(text = Base64)]
    pub data: Vec<u8>,
}

impl Key {
    /// Is this a key exchange, by its attribute?
    pub fn is_kex(&self) -> bool {
        self.kex == Some(true)
    }
}

/// `<keys jid>`: the keys for one bare JID's devices.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "keys")]
pub struct Keys {
    /// The recipient's bare JID.
    #[xml(attribute)]
    pub jid: String,
    /// Its keys.
    #[xml(child(n = ..))]
    pub keys: Vec<Key>,
}

/// `<header sid>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "header")]
pub struct Header {
    /// Sender device.
    #[xml(attribute)]
    pub sid: u32,
    /// One `<keys>` per recipient JID.
    #[xml(child(n = ..))]
    pub keys: Vec<Keys>,
}

/// `<payload>`: the encrypted SCE envelope.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "payload")]
pub struct Payload {
    /// AES-256-CBC ciphertext.
    #[xml(text = Base64)]
    pub data: Vec<u8>,
}

/// `<encrypted>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "encrypted")]
pub struct Encrypted {
    /// The header.
    #[xml(child)]
    pub header: Header,
    /// The payload; absent in empty (heartbeat, key transport) messages.
    #[xml(child(default))]
    pub payload: Option<Payload>,
}

impl Encrypted {
    /// The key element for (`jid`, `device`), if any.
    pub fn key_for(&self, jid: &str, device: DeviceId) -> Option<&Key> {
        self.header.keys.iter().filter(|k| k.jid == jid).flat_map(|k| &k.keys).find(|k| k.rid == device)
    }
}

/// Reads a `<devices>` list: valid ids, deduplicated, in order.
pub fn parse_device_list(elem: &Element) -> Result<Vec<DeviceId>, XmlError> {
    let list = Devices::try_from(elem.clone()).map_err(|e| invalid("devices", e))?;
    Ok(super::valid_device_ids(list.devices.iter().map(|d| d.id)))
}

/// Builds a `<devices>` list (no labels).
pub fn device_list(devices: &[DeviceId]) -> Element {
    Devices { devices: devices.iter().map(|&id| Device { id, label: None, labelsig: None }).collect() }.into()
}

fn key32(what: &'static str, data: &[u8]) -> Result<[u8; 32], XmlError> {
    data.try_into().map_err(|_| invalid(what, format!("{} bytes, expected 32", data.len())))
}

/// Reads a `<bundle>` (the signature is checked when a session is built). It reads the element in
/// place, as the derived [`Bundle`] reads it (the reference: [`parse_bundle_derived`]), without the
/// copy of the element tree and the events the derive takes: a cold start reads thousands of bundles
/// of a hundred pre-keys each. Children and attributes it does not know are skipped, as the derive
/// skips them; base64 may be wrapped over lines.
pub fn parse_bundle(elem: &Element) -> Result<PreKeyBundle, XmlError> {
    let (mut spk, mut spks, mut ik, mut prekeys) = (None, None, None, None);
    no_text(elem, "bundle")?;
    for child in elem.children().filter(|c| c.ns() == NS) {
        match child.name() {
            "spk" => only_one(&mut spk, "spk", (id_attr(child, "spk")?, base64_key32(child, "spk")?))?,
            "spks" => only_one(&mut spks, "spks", base64_text(child, "spks")?)?,
            "ik" => only_one(&mut ik, "ik", base64_key32(child, "ik")?)?,
            "prekeys" => {
                no_text(child, "prekeys")?;
                let mut keys = Vec::new();
                for pk in child.children().filter(|c| c.is("pk", NS)) {
                    keys.push((id_attr(pk, "pk")?, PublicKey::from_bytes(base64_key32(pk, "pk")?)));
                }
                only_one(&mut prekeys, "prekeys", keys)?
            }
            _ => {}
        }
    }
    let missing = |what: &'static str| invalid("bundle", format!("no <{what}>"));
    let (spk_id, spk) = spk.ok_or_else(|| missing("spk"))?;
    let spks = spks.ok_or_else(|| missing("spks"))?;
    let ik = ik.ok_or_else(|| missing("ik"))?;
    let pre_keys = prekeys.ok_or_else(|| missing("prekeys"))?;
    if spks.len() != 64 {
        return Err(invalid("spks", format!("{} bytes", spks.len())));
    }
    Ok(PreKeyBundle {
        identity_key: ed25519_to_curve25519(&ik).map_err(|e| invalid("ik", e))?,
        identity_key_ed25519: Some(ik),
        signed_pre_key_id: spk_id,
        signed_pre_key: PublicKey::from_bytes(spk),
        signed_pre_key_signature: spks,
        pre_keys,
    })
}

/// Refuses text (other than whitespace) in an element that holds only children.
fn no_text(elem: &Element, what: &'static str) -> Result<(), XmlError> {
    match elem.texts().any(|t| t.chars().any(|c| !c.is_ascii_whitespace())) {
        true => Err(invalid(what, "unexpected text")),
        false => Ok(()),
    }
}

/// Fills `slot` with the first of a child that may appear once.
fn only_one<T>(slot: &mut Option<T>, what: &'static str, value: T) -> Result<(), XmlError> {
    if slot.replace(value).is_some() {
        return Err(invalid("bundle", format!("more than one <{what}>")));
    }
    Ok(())
}

/// The `id` attribute of `elem` (a decimal `u32`, as the derive reads it).
fn id_attr(elem: &Element, what: &'static str) -> Result<u32, XmlError> {
    let id = elem.attr("id").ok_or_else(|| invalid(what, "no id"))?;
    id.parse().map_err(|e| invalid(what, format!("id {id:?}: {e}")))
}

/// The text of `elem` as standard base64, whitespace dropped.
fn base64_text(elem: &Element, what: &'static str) -> Result<Vec<u8>, XmlError> {
    let mut out = Vec::new();
    decode_base64_into(elem, what, |text| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode_vec(text, &mut out).map_err(|e| e.to_string())
    })?;
    Ok(out)
}

/// A 32-byte key as the text of `elem` (standard base64, whitespace dropped), decoded on the stack.
fn base64_key32(elem: &Element, what: &'static str) -> Result<[u8; 32], XmlError> {
    // 44 characters of base64 hold 32 bytes; the buffer has room for what any 44 decode to.
    let mut buf = [0u8; 36];
    let n = decode_base64_into(elem, what, |text| {
        use base64::Engine as _;
        if text.len() != 44 {
            return Err(format!("{} characters of base64, expected 44 (32 bytes)", text.len()));
        }
        base64::engine::general_purpose::STANDARD.decode_slice(text, &mut buf).map_err(|e| e.to_string())
    })?;
    key32(what, buf.get(..n).unwrap_or_default())
}

/// The text of `elem` with whitespace dropped (borrowed when it is one text node without whitespace,
/// as clients send it), and `decode` applied to it.
fn decode_base64_into<T>(
    elem: &Element,
    what: &'static str,
    decode: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, XmlError> {
    let mut texts = elem.texts();
    let text: std::borrow::Cow<'_, str> = match (texts.next(), texts.next()) {
        (None, _) => "".into(),
        (Some(t), None) if !t.bytes().any(|b| b.is_ascii_whitespace()) => t.into(),
        _ => collect_text(elem).into(),
    };
    decode(&text).map_err(|e| invalid(what, e))
}

/// All text of `elem`, whitespace dropped.
fn collect_text(elem: &Element) -> String {
    let mut text = String::new();
    for t in elem.texts() {
        text.extend(t.chars().filter(|c| !c.is_ascii_whitespace()));
    }
    text
}

/// [`parse_bundle`] through the derived [`Bundle`]: the reference it is checked against (tests, fuzz).
pub fn parse_bundle_derived(elem: &Element) -> Result<PreKeyBundle, XmlError> {
    let mut elem = elem.clone();
    strip_base64_whitespace(&mut elem);
    let b = Bundle::try_from(elem).map_err(|e| invalid("bundle", e))?;
    let ik = key32("ik", &b.ik.data)?;
    let mut pre_keys = Vec::with_capacity(b.prekeys.keys.len());
    for pk in &b.prekeys.keys {
        pre_keys.push((pk.id, PublicKey::from_bytes(key32("pk", &pk.data)?)));
    }
    if b.spks.data.len() != 64 {
        return Err(invalid("spks", format!("{} bytes", b.spks.data.len())));
    }
    Ok(PreKeyBundle {
        identity_key: ed25519_to_curve25519(&ik).map_err(|e| invalid("ik", e))?,
        identity_key_ed25519: Some(ik),
        signed_pre_key_id: b.spk.id,
        signed_pre_key: PublicKey::from_bytes(key32("spk", &b.spk.data)?),
        signed_pre_key_signature: b.spks.data,
        pre_keys,
    })
}

/// Builds a `<bundle>`; `None` when the bundle has no Ed25519 identity key (not an OMEMO 2 bundle).
pub fn bundle(b: &PreKeyBundle) -> Option<Element> {
    Some(
        Bundle {
            spk: Spk { id: b.signed_pre_key_id, data: b.signed_pre_key.as_bytes().to_vec() },
            spks: Spks { data: b.signed_pre_key_signature.clone() },
            ik: Ik { data: b.identity_key_ed25519?.to_vec() },
            prekeys: Prekeys {
                keys: b.pre_keys.iter().map(|(id, k)| Pk { id: *id, data: k.as_bytes().to_vec() }).collect(),
            },
        }
        .into(),
    )
}

/// A `<key rid kex?>` element (what [`Key`] becomes; the group send builds them in parallel).
pub fn key_element(rid: DeviceId, kex: Option<bool>, data: &[u8]) -> Element {
    use base64::Engine as _;
    let mut key = Element::builder("key", NS).attr(super::attr_name("rid"), rid.to_string());
    if let Some(kex) = kex {
        key = key.attr(super::attr_name("kex"), if kex { "true" } else { "false" });
    }
    key.append(base64::engine::general_purpose::STANDARD.encode(data)).build()
}

/// `<encrypted>` from key elements grouped per bare JID (see [`key_element`]) and the payload, if any.
pub fn encrypted_element(sid: DeviceId, groups: Vec<(String, Vec<Element>)>, payload: Option<&[u8]>) -> Element {
    use base64::Engine as _;
    let mut header = Element::builder("header", NS).attr(super::attr_name("sid"), sid.to_string()).build();
    for (jid, keys) in groups {
        let mut group = Element::builder("keys", NS).attr(super::attr_name("jid"), jid).build();
        for key in keys {
            group.append_child(key);
        }
        header.append_child(group);
    }
    let mut out = Element::builder("encrypted", NS).append(header).build();
    if let Some(p) = payload {
        out.append_child(
            Element::builder("payload", NS).append(base64::engine::general_purpose::STANDARD.encode(p)).build(),
        );
    }
    out
}

/// Appends, as text, the `<key>` element [`key_element`] builds (inside a `<keys>` of this namespace).
pub(crate) fn write_key(out: &mut String, rid: DeviceId, kex: Option<bool>, data: &[u8]) {
    super::text::key(out, rid, kex.map(|kex| ("kex", if kex { "true" } else { "false" })), data);
}

/// Appends, as text, the `<encrypted>` element [`encrypted_element`] builds, from keys written by
/// [`write_key`] and grouped per bare JID.
pub(crate) fn write_encrypted<'a, K: IntoIterator<Item = &'a str>>(
    out: &mut String,
    sid: DeviceId,
    groups: impl IntoIterator<Item = (&'a str, K)>,
    payload: Option<&[u8]>,
) {
    use super::text::{end, start};
    let header = |out: &mut String| {
        for (jid, keys) in groups {
            start(out, "keys", None, &[("jid", jid)]);
            out.push('>');
            for key in keys {
                out.push_str(key);
            }
            end(out, "keys");
        }
    };
    super::text::encrypted(out, NS, sid, header, payload);
}

impl Encrypted {
    /// The element, built directly (the same element `Element::from` gives, several times faster: this
    /// is the hot path of a group message with thousands of keys).
    pub fn to_element(&self) -> Element {
        let groups = self
            .header
            .keys
            .iter()
            .map(|g| (g.jid.clone(), g.keys.iter().map(|k| key_element(k.rid, k.kex, &k.data)).collect()))
            .collect();
        encrypted_element(self.header.sid, groups, self.payload.as_ref().map(|p| &p.data[..]))
    }
}

/// Reads an `<encrypted>` element (base64 whitespace tolerated; `kex` may be `true` or `1`).
pub fn parse_encrypted(elem: &Element) -> Result<Encrypted, XmlError> {
    super::read_encrypted(elem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::xml::{find_descendant, fixture, parse_element};

    #[test]
    fn real_bundle_device_list_and_message() {
        let b = fixture("pep-twomemo-bundle-fetch.recv.xml");
        let parsed = parse_bundle(find_descendant(&b, "bundle", NS).unwrap()).unwrap();
        assert_eq!(parsed.pre_keys.len(), 3);
        // slixmpp-omemo signed it with Ed25519; the trimmed fixture still verifies.
        parsed.verify_v2().unwrap();
        assert_eq!(parse_bundle(&bundle(&parsed).unwrap()).unwrap(), parsed);
        let l = fixture("pep-twomemo-devicelist-fetch.recv.xml");
        assert!(!parse_device_list(find_descendant(&l, "devices", NS).unwrap()).unwrap().is_empty());
        let m = fixture("muc-message-twomemo.recv.xml");
        let enc = parse_encrypted(find_descendant(&m, "encrypted", NS).unwrap()).unwrap();
        assert!(!enc.header.keys.is_empty() && enc.payload.is_some());
        let first = &enc.header.keys[0];
        assert!(enc.key_for(&first.jid, first.keys[0].rid).is_some());
    }

    /// The direct bundle reader agrees with the derived one (accepts the same, reads the same) on a real
    /// bundle and on every mutation here: children missing, doubled, unknown, in another namespace or
    /// out of order; attributes unknown or missing; ids that are no u32; base64 wrapped, broken or of
    /// the wrong length; stray text and nested elements.
    #[test]
    fn direct_bundle_reader_agrees_with_the_derived_one() {
        let b = fixture("pep-twomemo-bundle-fetch.recv.xml");
        let real = find_descendant(&b, "bundle", NS).unwrap().clone();
        let text = String::from(&real);
        let spk = text[text.find("<spk").unwrap()..text.find("</spk>").unwrap() + 6].to_owned();
        let spks = text[text.find("<spks").unwrap()..text.find("</spks>").unwrap() + 7].to_owned();
        let ik = text[text.find("<ik").unwrap()..text.find("</ik>").unwrap() + 5].to_owned();
        let pk = text[text.find("<pk ").unwrap()..text.find("</pk>").unwrap() + 5].to_owned();
        let prekeys = text[text.find("<prekeys").unwrap()..text.find("</prekeys>").unwrap() + 10].to_owned();
        let body = |parts: &[&str]| format!("<bundle xmlns='{NS}'>{}</bundle>", parts.concat());
        let mut cases: Vec<String> = vec![
            text.clone(),
            body(&[&spk, &spks, &ik, &prekeys]),
            body(&[&prekeys, &ik, &spks, &spk]),
            body(&[&spks, &ik, &prekeys]),
            body(&[&spk, &ik, &prekeys]),
            body(&[&spk, &spks, &prekeys]),
            body(&[&spk, &spks, &ik]),
            body(&[&spk, &spk, &spks, &ik, &prekeys]),
            body(&[&spk, &spks, &spks, &ik, &prekeys]),
            body(&[&spk, &spks, &ik, &ik, &prekeys]),
            body(&[&spk, &spks, &ik, &prekeys, &prekeys]),
            body(&[&spk, &spks, &ik, "<prekeys/>"]),
            body(&[&spk, &spks, &ik, &prekeys, "<other/>"]),
            body(&[&spk, &spks, &ik, &prekeys, "<spk xmlns='urn:other' id='1'>AA==</spk>"]),
            body(&[&spk, &spks, &ik, "text", &prekeys]),
            body(&[&spk, &spks, &ik, "\n  ", &prekeys]),
            body(&[&spk.replace("<spk", "<spk extra='1'"), &spks, &ik, &prekeys]),
            body(&[&spk.replace("</spk>", "<x/></spk>"), &spks, &ik, &prekeys]),
            body(&[&spk, &spks, &ik, &prekeys.replace("</prekeys>", "<pk/></prekeys>")]),
            body(&[&spk, &spks, &ik, &prekeys.replace("</prekeys>", "<other/>text</prekeys>")]),
            body(&[
                &spk,
                &spks,
                &ik,
                &prekeys.replace("</prekeys>", "<pk xmlns='urn:other' id='9'>AA==</pk></prekeys>"),
            ]),
            body(&[&spk, &spks, &ik, &prekeys.replace("</prekeys>", &format!("{pk}{pk}</prekeys>"))]),
            text.replacen("<bundle", "<bundle extra='x'", 1),
        ];
        for id in ["", "abc", "-1", "+7", "007", "4294967296", " 5", "5 "] {
            let bad_spk = spk.replacen(&spk[..spk.find('>').unwrap()], &format!("<spk id='{id}'"), 1);
            cases.push(body(&[&bad_spk, &spks, &ik, &prekeys]));
            let bad_pk = pk.replacen(&pk[..pk.find('>').unwrap()], &format!("<pk id='{id}'"), 1);
            cases.push(body(&[&spk, &spks, &ik, &prekeys.replace("</prekeys>", &format!("{bad_pk}</prekeys>"))]));
        }
        cases.push(body(&[&spk.replacen(" id=", " di=", 1), &spks, &ik, &prekeys]));
        for (what, from) in [("spk", &spk), ("spks", &spks), ("ik", &ik), ("pk", &pk)] {
            let open = from.find('>').unwrap() + 1;
            let data = &from[open..from.rfind("</").unwrap()];
            for replaced in [
                format!("{}\n {}", &data[..5], &data[5..]),
                data.replacen(|c: char| c.is_ascii_alphanumeric(), "*", 1),
                data.trim_end_matches('=').to_owned(),
                format!("{data}AAAA"),
                data[4..].to_owned(),
                String::new(),
            ] {
                let changed = from.replacen(data, &replaced, 1);
                let mut parts = [spk.clone(), spks.clone(), ik.clone(), prekeys.clone()];
                match what {
                    "spk" => parts[0] = changed,
                    "spks" => parts[1] = changed,
                    "ik" => parts[2] = changed,
                    _ => parts[3] = prekeys.replacen(&pk, &changed, 1),
                }
                cases.push(body(&parts.iter().map(String::as_str).collect::<Vec<_>>()));
            }
        }
        let (mut ok, mut err) = (0, 0);
        for case in &cases {
            let Ok(e) = parse_element(case) else { continue };
            let (direct, derived) = (parse_bundle(&e), parse_bundle_derived(&e));
            assert_eq!(direct.as_ref().ok(), derived.as_ref().ok(), "{case}\n{direct:?}\n{derived:?}");
            if direct.is_ok() {
                ok += 1;
            } else {
                err += 1;
            }
        }
        assert!(ok >= 5 && err >= 20, "{ok} accepted, {err} refused");
    }

    #[test]
    fn direct_element_equals_the_derived_one() {
        let e = Encrypted {
            header: Header {
                sid: 7,
                keys: vec![
                    Keys {
                        jid: "a@b".into(),
                        keys: vec![
                            Key { rid: 2, kex: Some(true), data: vec![1, 2, 3] },
                            Key { rid: 3, kex: None, data: vec![] },
                        ],
                    },
                    Keys {
                        jid: "o'brien&co@b".into(),
                        keys: vec![Key { rid: 4, kex: Some(false), data: vec![9; 50] }],
                    },
                ],
            },
            payload: Some(Payload { data: vec![5; 33] }),
        };
        assert_eq!(e.to_element(), Element::from(e.clone()));
        assert_eq!(String::from(&e.to_element()), String::from(&Element::from(e.clone())));
        let empty = Encrypted { header: Header { sid: 1, keys: vec![] }, payload: None };
        assert_eq!(empty.to_element(), Element::from(empty.clone()));
        // Written as text (the group send), read back: the same element.
        for e in [e, empty] {
            let groups: Vec<(String, Vec<String>)> = e
                .header
                .keys
                .iter()
                .map(|g| {
                    let keys = g.keys.iter().map(|k| {
                        let mut text = String::new();
                        write_key(&mut text, k.rid, k.kex, &k.data);
                        text
                    });
                    (g.jid.clone(), keys.collect())
                })
                .collect();
            let mut text = String::new();
            let groups = groups.iter().map(|(jid, keys)| (jid.as_str(), keys.iter().map(String::as_str)));
            write_encrypted(&mut text, e.header.sid, groups, e.payload.as_ref().map(|p| &p.data[..]));
            // (compared as a receiver reads both: an empty key is no text node, not an empty one)
            let built = parse_element(&String::from(&Element::from(e.clone()))).unwrap();
            assert_eq!(parse_element(&text).unwrap(), built, "{text}");
        }
    }

    #[test]
    fn kex_attribute_written_only_when_true() {
        let e = Encrypted {
            header: Header {
                sid: 1,
                keys: vec![Keys {
                    jid: "a@b".into(),
                    keys: vec![
                        Key { rid: 2, kex: Some(true), data: vec![1] },
                        Key { rid: 3, kex: None, data: vec![2] },
                    ],
                }],
            },
            payload: None,
        };
        let text = String::from(&Element::from(e.clone()));
        assert_eq!(text.matches("kex=").count(), 1, "{text}");
        assert_eq!(parse_encrypted(&parse_element(&text).unwrap()).unwrap(), e);
        let one = parse_element("<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a@b'><key rid='2' kex='1'>AQ==</key></keys></header></encrypted>").unwrap();
        assert!(parse_encrypted(&one).unwrap().header.keys[0].keys[0].is_kex());
    }
}
