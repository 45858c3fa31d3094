#!/usr/bin/env python3
"""Known-answer vectors for OMEMO 2 primitives, computed with python-omemo's twomemo 2.1.0 (and
doubleratchet 1.3.0, xeddsa 1.2.0 underneath).

Run with the oracle's venv:  ~/.cache/omemo-oracle/venv/bin/python tests/vectors/generate_twomemo.py
It rewrites tests/vectors/twomemo_kat.json. Inputs are derived from fixed seeds, so the output is stable.
"""
import asyncio, json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vectors_common import clamp, det  # noqa: E402
import xeddsa
import twomemo.twomemo as tm
from doubleratchet.recommended import HashFunction
from twomemo.twomemo_pb2 import OMEMOMessage


async def main() -> None:
    v = {"source": "python-omemo twomemo 2.1.0 / doubleratchet 1.3.0 / xeddsa 1.2.0", "root_chain": [],
         "message_keys": [], "authenticated_message": [], "payload": [], "identity_forms": [], "bundle_signature": []}
    for i in range(3):
        root = det(f"v2-root-{i}")
        our = clamp(det(f"v2-root-our-{i}"))
        their = xeddsa.priv_to_curve25519_pub(clamp(det(f"v2-root-their-{i}")))
        out = await tm.RootChainKDFImpl.derive(root, xeddsa.x25519(our, their), 64)
        v["root_chain"].append({"root": root.hex(), "our_private": our.hex(), "their_public": their.hex(),
                                "new_root": out[:32].hex(), "chain_key": out[32:].hex()})
    for i in range(2):
        seed = det(f"v2-mk-seed-{i}")
        enc, auth, iv = await tm.AEADImpl._AEADImpl__derive(seed, HashFunction.SHA_256, tm.AEADImpl._get_info())
        v["message_keys"].append({"seed": seed.hex(), "cipher_key": enc.hex(), "mac_key": auth.hex(), "iv": iv.hex()})
    for i, (n, pn, size) in enumerate([(0, 0, 48), (9, 4, 48), (1000, 999, 32)]):
        seed = det(f"v2-msg-seed-{i}")
        ik_a = xeddsa.seed_to_ed25519_pub(det(f"v2-msg-ik-a-{i}"))
        ik_b = xeddsa.seed_to_ed25519_pub(det(f"v2-msg-ik-b-{i}"))
        ratchet = xeddsa.priv_to_curve25519_pub(clamp(det(f"v2-msg-ratchet-{i}")))
        pt = det(f"v2-msg-pt-{i}", size)
        ad = ik_a + ik_b + OMEMOMessage(n=n, pn=pn, dh_pub=ratchet).SerializeToString()
        msg = await tm.AEADImpl.encrypt(pt, seed, ad)
        v["authenticated_message"].append({"message_key_seed": seed.hex(), "counter": n, "previous_counter": pn,
                                           "ik_initiator": ik_a.hex(), "ik_responder": ik_b.hex(),
                                           "ratchet_key": ratchet.hex(), "plaintext": pt.hex(), "serialized": msg.hex()})
    backend = tm.Twomemo.__new__(tm.Twomemo)
    real = tm.secrets.token_bytes
    for i, text in enumerate([b"<envelope xmlns='urn:xmpp:sce:1'/>", det("v2-payload-long", 300)]):
        key = det(f"v2-payload-key-{i}")
        tm.secrets.token_bytes = lambda n, key=key: key[:n]
        try:
            content, km = await tm.Twomemo.encrypt_plaintext(backend, text)
        finally:
            tm.secrets.token_bytes = real
        v["payload"].append({"plaintext": text.hex(), "key": km.key.hex(), "auth_tag": km.auth_tag.hex(),
                             "ciphertext": content.ciphertext.hex()})
    for i in range(4):
        priv = clamp(det(f"v2-ik-priv-{i}"))
        # The Ed25519 form XEdDSA signs under: the Edwards point of the Curve25519 key with sign bit 0.
        ed_sign0 = xeddsa.curve25519_pub_to_ed25519_pub(xeddsa.priv_to_curve25519_pub(priv), False)
        v["identity_forms"].append({"private": priv.hex(), "curve": xeddsa.priv_to_curve25519_pub(priv).hex(),
                                    "ed25519_sign_bit_0": ed_sign0.hex()})
    for i in range(4):
        seed = det(f"v2-bundle-seed-{i}")
        ed = xeddsa.seed_to_ed25519_pub(seed)
        spk = xeddsa.priv_to_curve25519_pub(clamp(det(f"v2-bundle-spk-{i}")))
        v["bundle_signature"].append({"ik_ed25519": ed.hex(), "ik_curve": xeddsa.ed25519_pub_to_curve25519_pub(ed).hex(),
                                      "spk": spk.hex(), "spks": xeddsa.ed25519_seed_sign(seed, spk).hex()})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "twomemo_kat.json")
    with open(out, "w") as f:
        json.dump(v, f, indent=1)
        f.write("\n")


asyncio.run(main())
