//! OMEMO 0.3 (`eu.siacs.conversations.axolotl`) elements through `xmpp_parsers::legacy_omemo`.

use minidom::Element;
use session_store::{DeviceId, PreKeyBundle, PublicKey};
use xmpp_parsers::legacy_omemo::{
    Bundle, Device, DeviceList, Encrypted, IdentityKey, PreKeyPublic, Prekeys, SignedPreKeyPublic,
    SignedPreKeySignature,
};

use super::{invalid, strip_base64_whitespace};
use crate::error::XmlError;

/// The namespace.
pub const NS: &str = "eu.siacs.conversations.axolotl";
/// The device list PEP node.
pub const DEVICE_LIST_NODE: &str = "eu.siacs.conversations.axolotl.devicelist";
/// The PEP node of one device's bundle.
pub fn bundle_node(device: DeviceId) -> String {
    format!("eu.siacs.conversations.axolotl.bundles:{device}")
}

/// Reads a `<list>`: valid device ids, deduplicated, in order.
pub fn parse_device_list(elem: &Element) -> Result<Vec<DeviceId>, XmlError> {
    let list = DeviceList::try_from(elem.clone()).map_err(|e| invalid("list", e))?;
    Ok(super::valid_device_ids(list.devices.iter().map(|d| d.id)))
}

/// Builds a `<list>`.
pub fn device_list(devices: &[DeviceId]) -> Element {
    DeviceList { devices: devices.iter().map(|&id| Device { id }).collect() }.into()
}

/// Reads a `<bundle>` into a [`PreKeyBundle`] (the signature is checked when a session is built).
pub fn parse_bundle(elem: &Element) -> Result<PreKeyBundle, XmlError> {
    let mut elem = elem.clone();
    strip_base64_whitespace(&mut elem);
    let b = Bundle::try_from(elem).map_err(|e| invalid("bundle", e))?;
    let spk = b.signed_pre_key_public.ok_or_else(|| invalid("bundle", "no signedPreKeyPublic"))?;
    let sig = b.signed_pre_key_signature.ok_or_else(|| invalid("bundle", "no signedPreKeySignature"))?;
    let ik = b.identity_key.ok_or_else(|| invalid("bundle", "no identityKey"))?;
    let key = |what: &'static str, data: &[u8]| PublicKey::deserialize(data).map_err(|e| invalid(what, e));
    let mut pre_keys = Vec::new();
    for pk in b.prekeys.map(|p| p.keys).unwrap_or_default() {
        pre_keys.push((pk.pre_key_id, key("preKeyPublic", &pk.data)?));
    }
    if sig.data.len() != 64 {
        return Err(invalid("signedPreKeySignature", format!("{} bytes", sig.data.len())));
    }
    Ok(PreKeyBundle {
        identity_key: key("identityKey", &ik.data)?,
        identity_key_ed25519: None,
        // Conversations always writes the id; a missing one is read as 0, which python-omemo does too.
        signed_pre_key_id: spk.signed_pre_key_id.unwrap_or(0),
        signed_pre_key: key("signedPreKeyPublic", &spk.data)?,
        signed_pre_key_signature: sig.data,
        pre_keys,
    })
}

/// Builds a `<bundle>`.
pub fn bundle(b: &PreKeyBundle) -> Element {
    Bundle {
        signed_pre_key_public: Some(SignedPreKeyPublic {
            signed_pre_key_id: Some(b.signed_pre_key_id),
            data: b.signed_pre_key.serialize().to_vec(),
        }),
        signed_pre_key_signature: Some(SignedPreKeySignature { data: b.signed_pre_key_signature.clone() }),
        identity_key: Some(IdentityKey { data: b.identity_key.serialize().to_vec() }),
        prekeys: Some(Prekeys {
            keys: b
                .pre_keys
                .iter()
                .map(|(id, k)| PreKeyPublic { pre_key_id: *id, data: k.serialize().to_vec() })
                .collect(),
        }),
    }
    .into()
}

/// Builds the `<encrypted>` element, directly (the hot path of a group message). `prekey` is written
/// only when true, as libsignal clients do.
pub fn encrypted(enc: Encrypted) -> Element {
    let keys = enc.header.keys.iter().map(|k| key_element(k.rid, k.prekey, &k.data)).collect();
    encrypted_element(enc.header.sid, keys, &enc.header.iv.data, enc.payload.as_ref().map(|p| &p.data[..]))
}

/// A `<key rid prekey?>` element (the group send builds them in parallel).
pub fn key_element(rid: DeviceId, prekey: bool, data: &[u8]) -> Element {
    use base64::Engine as _;
    let mut key = Element::builder("key", NS).attr(super::attr_name("rid"), rid.to_string());
    if prekey {
        key = key.attr(super::attr_name("prekey"), "true");
    }
    key.append(base64::engine::general_purpose::STANDARD.encode(data)).build()
}

/// `<encrypted>` from key elements (see [`key_element`]), the IV and the payload, if any.
pub fn encrypted_element(sid: DeviceId, keys: Vec<Element>, iv: &[u8], payload: Option<&[u8]>) -> Element {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut header = Element::builder("header", NS).attr(super::attr_name("sid"), sid.to_string()).build();
    for key in keys {
        header.append_child(key);
    }
    header.append_child(Element::builder("iv", NS).append(b64.encode(iv)).build());
    let mut out = Element::builder("encrypted", NS).append(header).build();
    if let Some(p) = payload {
        out.append_child(Element::builder("payload", NS).append(b64.encode(p)).build());
    }
    out
}

/// Appends, as text, the `<key>` element [`key_element`] builds (inside a `<header>` of this namespace).
pub(crate) fn write_key(out: &mut String, rid: DeviceId, prekey: bool, data: &[u8]) {
    super::text::key(out, rid, prekey.then_some(("prekey", "true")), data);
}

/// Appends, as text, the `<encrypted>` element [`encrypted_element`] builds, from keys written by
/// [`write_key`].
pub(crate) fn write_encrypted<'a>(
    out: &mut String,
    sid: DeviceId,
    keys: impl IntoIterator<Item = &'a str>,
    iv: &[u8],
    payload: Option<&[u8]>,
) {
    let header = |out: &mut String| {
        for key in keys {
            out.push_str(key);
        }
        super::text::base64_element(out, "iv", None, &[], iv);
    };
    super::text::encrypted(out, NS, sid, header, payload);
}

/// Reads an `<encrypted>` element (base64 whitespace tolerated; `prekey` may be `true` or `1`).
pub fn parse_encrypted(elem: &Element) -> Result<Encrypted, XmlError> {
    super::read_encrypted(elem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::xml::{find_descendant, fixture, parse_element};

    #[test]
    fn real_bundle_and_device_list() {
        let stanza = fixture("pep-oldmemo-bundle-fetch.recv.xml");
        let b = find_descendant(&stanza, "bundle", NS).unwrap();
        let parsed = parse_bundle(b).unwrap();
        assert_eq!(parsed.pre_keys.len(), 3);
        // The fixture's bundle was trimmed, not re-signed: its signature still verifies.
        parsed.verify_0_3().unwrap();
        let again = parse_bundle(&bundle(&parsed)).unwrap();
        assert_eq!(again, parsed);
        let stanza = fixture("pep-oldmemo-devicelist-fetch.recv.xml");
        let l = find_descendant(&stanza, "list", NS).unwrap();
        assert!(!parse_device_list(l).unwrap().is_empty());
        let m = fixture("muc-message-oldmemo.recv.xml");
        let enc = parse_encrypted(find_descendant(&m, "encrypted", NS).unwrap()).unwrap();
        assert_eq!(enc.header.keys.len(), 3);
        assert!(enc.header.keys.iter().all(|k| k.prekey));
        assert_eq!(enc.header.iv.data.len(), 12);
    }

    /// The direct builder gives the element the `xmpp-parsers` type gives, minus `prekey='false'`.
    #[test]
    fn direct_element_equals_the_derived_one() {
        use xmpp_parsers::legacy_omemo::{Header, Key, Payload, IV};
        let e = Encrypted {
            header: Header {
                sid: 7,
                keys: vec![
                    Key { rid: 2, prekey: true, data: vec![1, 2, 3] },
                    Key { rid: 3, prekey: false, data: vec![4; 40] },
                ],
                iv: IV { data: vec![0; 12] },
            },
            payload: Some(Payload { data: vec![5; 33] }),
        };
        let text = String::from(&encrypted(e.clone()));
        assert_eq!(text.matches("prekey=").count(), 1);
        let derived =
            String::from(&Element::from(e.clone())).replace(" prekey='false'", "").replace(" prekey=\"false\"", "");
        assert_eq!(text, derived);
        assert_eq!(parse_encrypted(&parse_element(&text).unwrap()).unwrap(), e);
        // Written as text (the group send), read back: the same element, with and without a payload.
        for payload in [e.payload.clone(), None] {
            let e = Encrypted { payload, ..e.clone() };
            let keys: Vec<String> = e
                .header
                .keys
                .iter()
                .map(|k| {
                    let mut text = String::new();
                    write_key(&mut text, k.rid, k.prekey, &k.data);
                    text
                })
                .collect();
            let mut written = String::new();
            let payload = e.payload.as_ref().map(|p| &p.data[..]);
            write_encrypted(&mut written, e.header.sid, keys.iter().map(String::as_str), &e.header.iv.data, payload);
            assert_eq!(parse_element(&written).unwrap(), encrypted(e.clone()), "{written}");
        }
    }

    #[test]
    fn liberal_attributes_and_bad_input() {
        let e = parse_element(
            "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='5'><key rid='7' prekey='1'>AA\n  AA</key><key rid='8' prekey='true'>AAAA</key><key rid='9'>AAAA</key><iv>AAAAAAAAAAAAAAAA</iv></header></encrypted>",
        )
        .unwrap();
        let enc = parse_encrypted(&e).unwrap();
        assert_eq!(enc.header.keys.iter().map(|k| k.prekey).collect::<Vec<_>>(), vec![true, true, false]);
        assert_eq!(enc.header.keys[0].data, vec![0, 0, 0]);
        assert!(parse_element("<encrypted").is_err());
        let no_iv =
            parse_element("<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='5'/></encrypted>").unwrap();
        assert!(parse_encrypted(&no_iv).is_err());
        let bad_list = parse_element("<list xmlns='eu.siacs.conversations.axolotl'><device id='x'/></list>").unwrap();
        assert!(parse_device_list(&bad_list).is_err());
        let list = parse_element(
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='0'/><device id='3'/><device id='3'/></list>",
        )
        .unwrap();
        assert_eq!(parse_device_list(&list).unwrap(), vec![3]);
    }
}
