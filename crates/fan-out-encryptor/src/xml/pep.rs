//! PEP (XEP-0163) requests for OMEMO's device lists and bundles, in both namespaces, and reading their
//! results and notifications. Sans-IO: the caller sends the IQs and passes the answers back.
//!
//! | | OMEMO 0.3 | OMEMO 2 |
//! |---|---|---|
//! | device list | node `eu.siacs.conversations.axolotl.devicelist`, item `current` | node `urn:xmpp:omemo:2:devices`, item `current` |
//! | bundle | node `eu.siacs.conversations.axolotl.bundles:<id>`, item `current` | node `urn:xmpp:omemo:2:bundles`, item `<id>`, `max_items=max` |
//!
//! Every publish carries publish-options: open access (others fetch our keys without a subscription),
//! persistent items, and `max_items` (1, or `max` for the OMEMO 2 bundles node, which holds one item per
//! device).

use minidom::Element;
use session_store::{DeviceId, Namespace, PreKeyBundle};
use xmpp_parsers::{
    data_forms::{DataForm, DataFormType, Field, FieldType},
    iq::Iq,
    jid::Jid,
    pubsub::{
        pubsub::{Item, Items, Publish, PublishOptions},
        ItemId, NodeName, PubSub,
    },
};

use super::{find_descendant, v0_3, v2};
use crate::error::XmlError;

const PUBLISH_OPTIONS_FORM: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The device list node of `ns`.
pub fn device_list_node(ns: Namespace) -> String {
    match ns {
        Namespace::Oldmemo => v0_3::DEVICE_LIST_NODE.to_owned(),
        _ => v2::DEVICES_NODE.to_owned(),
    }
}

/// The bundle node and item id of `device` in `ns`.
pub fn bundle_node_and_item(ns: Namespace, device: DeviceId) -> (String, String) {
    match ns {
        Namespace::Oldmemo => (v0_3::bundle_node(device), "current".to_owned()),
        _ => (v2::BUNDLES_NODE.to_owned(), device.to_string()),
    }
}

fn jid(s: &str) -> Result<Jid, XmlError> {
    Jid::new(s).map_err(|e| XmlError::Invalid { element: "jid", detail: e.to_string() })
}

fn publish(id: &str, node: String, item_id: String, payload: Element, max_items: &str) -> Iq {
    let form = DataForm::new(
        DataFormType::Submit,
        PUBLISH_OPTIONS_FORM,
        vec![
            Field::new("pubsub#access_model", FieldType::TextSingle).with_value("open"),
            Field::new("pubsub#persist_items", FieldType::Boolean).with_value("true"),
            Field::new("pubsub#max_items", FieldType::TextSingle).with_value(max_items),
        ],
    );
    let item = Item { id: Some(ItemId(item_id)), publisher: None, payload: Some(payload) };
    Iq::from_set(
        id,
        PubSub::Publish {
            publish: Publish { node: NodeName(node), items: vec![item] },
            publish_options: Some(PublishOptions { form: Some(form) }),
        },
    )
}

/// Publishes our device list in `ns` (to our own bare JID).
pub fn publish_device_list(ns: Namespace, own_jid: &str, devices: &[DeviceId], id: &str) -> Result<Element, XmlError> {
    let payload = match ns {
        Namespace::Oldmemo => v0_3::device_list(devices),
        _ => v2::device_list(devices),
    };
    Ok(publish(id, device_list_node(ns), "current".into(), payload, "1").with_to(jid(own_jid)?).into())
}

/// Publishes our bundle in `ns`.
pub fn publish_bundle(
    ns: Namespace,
    own_jid: &str,
    device: DeviceId,
    bundle: &PreKeyBundle,
    id: &str,
) -> Result<Element, XmlError> {
    let (payload, max) = match ns {
        Namespace::Oldmemo => (v0_3::bundle(bundle), "1"),
        _ => (
            v2::bundle(bundle)
                .ok_or(XmlError::Invalid { element: "bundle", detail: "no Ed25519 identity key".into() })?,
            "max",
        ),
    };
    let (node, item) = bundle_node_and_item(ns, device);
    Ok(publish(id, node, item, payload, max).with_to(jid(own_jid)?).into())
}

/// Fetches `jid`'s device list in `ns`.
pub fn fetch_device_list(ns: Namespace, of: &str, id: &str) -> Result<Element, XmlError> {
    let mut items = Items::new(&device_list_node(ns));
    items.max_items = Some(1);
    Ok(Iq::from_get(id, PubSub::Items(items)).with_to(jid(of)?).into())
}

/// Fetches the bundle of `jid`'s `device` in `ns`.
pub fn fetch_bundle(ns: Namespace, of: &str, device: DeviceId, id: &str) -> Result<Element, XmlError> {
    let (node, item) = bundle_node_and_item(ns, device);
    let mut items = Items::new(&node);
    items.items = vec![Item { id: Some(ItemId(item)), publisher: None, payload: None }];
    Ok(Iq::from_get(id, PubSub::Items(items)).with_to(jid(of)?).into())
}

/// The `<items>` of `node` in an IQ result (`pubsub`) or a notification (`pubsub#event`).
fn items_of<'a>(stanza: &'a Element, node: &str) -> Option<&'a Element> {
    ["http://jabber.org/protocol/pubsub", "http://jabber.org/protocol/pubsub#event"]
        .iter()
        .filter_map(|ns| find_descendant(stanza, "items", ns))
        .find(|items| items.attr("node") == Some(node))
}

/// Reads a device list of `ns` from an IQ result or a PEP notification. An `<items>` without an item is
/// an empty list (a node with nothing published).
pub fn read_device_list(ns: Namespace, stanza: &Element) -> Result<Vec<DeviceId>, XmlError> {
    let node = device_list_node(ns);
    let items = items_of(stanza, &node)
        .ok_or(XmlError::Invalid { element: "items", detail: format!("no items of node {node}") })?;
    match ns {
        Namespace::Oldmemo => find_descendant(items, "list", v0_3::NS).map(v0_3::parse_device_list),
        _ => find_descendant(items, "devices", v2::NS).map(v2::parse_device_list),
    }
    .unwrap_or(Ok(Vec::new()))
}

/// Reads the bundle of `device` in `ns` from an IQ result.
pub fn read_bundle(ns: Namespace, device: DeviceId, stanza: &Element) -> Result<PreKeyBundle, XmlError> {
    let (node, item_id) = bundle_node_and_item(ns, device);
    let items = items_of(stanza, &node)
        .ok_or(XmlError::Invalid { element: "items", detail: format!("no items of node {node}") })?;
    let item = items
        .children()
        .find(|i| i.name() == "item" && (ns == Namespace::Oldmemo || i.attr("id") == Some(item_id.as_str())))
        .ok_or(XmlError::Invalid { element: "item", detail: format!("no bundle item for device {device}") })?;
    match ns {
        Namespace::Oldmemo => find_descendant(item, "bundle", v0_3::NS).map(v0_3::parse_bundle),
        _ => find_descendant(item, "bundle", v2::NS).map(v2::parse_bundle),
    }
    .ok_or(XmlError::Invalid { element: "bundle", detail: "item holds no bundle".into() })?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::xml::fixture;

    /// Our requests have the shape of what slixmpp-omemo sent to Prosody (captured fixtures).
    #[test]
    fn requests_match_captured_stanzas() {
        let bundle = v0_3::parse_bundle(
            find_descendant(&fixture("pep-oldmemo-bundle-fetch.recv.xml"), "bundle", v0_3::NS).unwrap(),
        )
        .unwrap();
        let ours = publish_bundle(Namespace::Oldmemo, "bob@localhost", 1797904305, &bundle, "x").unwrap();
        let theirs = fixture("pep-oldmemo-bundle-publish.send.xml");
        let node = |e: &Element| {
            find_descendant(e, "publish", "http://jabber.org/protocol/pubsub").unwrap().attr("node").map(str::to_owned)
        };
        assert_eq!(node(&ours), node(&theirs));
        let fields = |e: &Element| {
            let x = find_descendant(e, "x", "jabber:x:data").unwrap();
            let mut f: Vec<(String, String)> = x
                .children()
                .filter(|c| c.name() == "field")
                .map(|c| (c.attr("var").unwrap().to_owned(), c.children().next().map(|v| v.text()).unwrap_or_default()))
                .collect();
            f.sort();
            f
        };
        assert_eq!(fields(&ours), fields(&theirs));
        let v2_bundle =
            v2::parse_bundle(find_descendant(&fixture("pep-twomemo-bundle-fetch.recv.xml"), "bundle", v2::NS).unwrap())
                .unwrap();
        let ours = publish_bundle(Namespace::Twomemo, "bob@localhost", 1797904305, &v2_bundle, "x").unwrap();
        let theirs = fixture("pep-twomemo-bundle-publish.send.xml");
        assert_eq!(node(&ours), node(&theirs));
        assert_eq!(fields(&ours), fields(&theirs), "max_items=max on the OMEMO 2 bundles node");
        let item = |e: &Element| {
            find_descendant(e, "item", "http://jabber.org/protocol/pubsub").unwrap().attr("id").map(str::to_owned)
        };
        assert_eq!(item(&ours), item(&theirs), "item id = device id");
        for (ns, f) in [
            (Namespace::Oldmemo, "pep-oldmemo-devicelist-publish.send.xml"),
            (Namespace::Twomemo, "pep-twomemo-devicelist-publish.send.xml"),
        ] {
            let ours = publish_device_list(ns, "bob@localhost", &[1797904305], "x").unwrap();
            let theirs = fixture(f);
            assert_eq!(node(&ours), node(&theirs));
            assert_eq!(fields(&ours), fields(&theirs));
            let published = |e: &Element| match ns {
                Namespace::Oldmemo => v0_3::parse_device_list(find_descendant(e, "list", v0_3::NS).unwrap()).unwrap(),
                _ => v2::parse_device_list(find_descendant(e, "devices", v2::NS).unwrap()).unwrap(),
            };
            assert_eq!(published(&ours), published(&theirs));
        }
    }

    #[test]
    fn results_and_notifications_are_read() {
        for (ns, list, own, contact) in [
            (
                Namespace::Oldmemo,
                "pep-oldmemo-devicelist-fetch.recv.xml",
                "pep-oldmemo-devicelist-notify-own.recv.xml",
                "pep-oldmemo-devicelist-notify-contact.recv.xml",
            ),
            (
                Namespace::Twomemo,
                "pep-twomemo-devicelist-fetch.recv.xml",
                "pep-twomemo-devicelist-notify-own.recv.xml",
                "pep-twomemo-devicelist-notify-contact.recv.xml",
            ),
        ] {
            for f in [list, own, contact] {
                assert!(!read_device_list(ns, &fixture(f)).unwrap().is_empty(), "{f}");
            }
            // The other namespace's node is not mistaken for this one.
            let other = if ns == Namespace::Oldmemo { Namespace::Twomemo } else { Namespace::Oldmemo };
            assert!(read_device_list(other, &fixture(list)).is_err());
        }
        let b = fixture("pep-twomemo-bundle-fetch.recv.xml");
        let id: u32 = find_descendant(&b, "item", "http://jabber.org/protocol/pubsub")
            .unwrap()
            .attr("id")
            .unwrap()
            .parse()
            .unwrap();
        read_bundle(Namespace::Twomemo, id, &b).unwrap().verify_v2().unwrap();
        assert!(read_bundle(Namespace::Twomemo, id + 1, &b).is_err(), "a bundle of another device is refused");
        let b = fixture("pep-oldmemo-bundle-fetch.recv.xml");
        let node =
            find_descendant(&b, "items", "http://jabber.org/protocol/pubsub").unwrap().attr("node").unwrap().to_owned();
        let id: u32 = node.rsplit(':').next().unwrap().parse().unwrap();
        read_bundle(Namespace::Oldmemo, id, &b).unwrap().verify_0_3().unwrap();
        // Fetch requests name the right node and item.
        let f = fetch_bundle(Namespace::Twomemo, "carol@localhost", 1847044245, "x").unwrap();
        let theirs = fixture("pep-twomemo-bundle-fetch.send.xml");
        let items = |e: &Element| find_descendant(e, "items", "http://jabber.org/protocol/pubsub").unwrap().clone();
        assert_eq!(items(&f).attr("node"), items(&theirs).attr("node"));
        assert_eq!(items(&f).children().next().unwrap().attr("id"), Some("1847044245"));
        let f = fetch_device_list(Namespace::Oldmemo, "carol@localhost", "x").unwrap();
        assert_eq!(items(&f).attr("node"), items(&fixture("pep-oldmemo-devicelist-fetch.send.xml")).attr("node"));
    }
}
