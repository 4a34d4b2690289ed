"""Durable endpoint state: what moto holds survives the endpoint's restart and the host's reboot.

moto keeps its state in memory. After every request that changes it, the control plane writes the
state of the services bakery and its users touch (EC2 with its key pairs, VPCs, subnets, groups,
ACLs, ENIs, Elastic IPs, launch templates and images; SSM; IAM; ELBv2; ...) to one file, atomically
(write, then rename), before the answer leaves: a killed endpoint loses nothing it acknowledged, and
a rebooted host finds the last state (no fsync: a power cut is not what this guards against; a save
costs ~20 ms). The next endpoint restores it before it serves. cloudpickle is used because moto's backends hold a few lambdas that
the standard pickler refuses; the snapshot is only ever read by the same moto version that wrote
it (another version starts empty, with a warning, rather than guess at objects it does not know).
"""

from __future__ import annotations

import copyreg
import logging
import pickle
from pathlib import Path

log = logging.getLogger("bakery.local")

SERVICES = ("ec2", "ssm", "iam", "elbv2", "autoscaling", "secretsmanager", "kms", "sts", "sns", "sqs",
            "cloudwatch", "logs", "s3")  # s3: images' evidence (bakery/cloud/evidence.py)
FORMAT = 1


class Snapshots:
    def __init__(self, path: Path):
        self.path = path

    def save(self) -> None:
        import cloudpickle
        import moto

        import io

        _register_reducers()
        state = {name: dict(_backend(name)) for name in SERVICES}
        out = io.BytesIO()
        _Pickler(out).dump({"format": FORMAT, "moto": moto.__version__, "services": state})
        blob = out.getvalue()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(self.path)

    def restore(self) -> bool:
        """Put the saved state back into moto; False when there is none (or none usable)."""
        import moto

        try:
            data = pickle.loads(self.path.read_bytes())
        except FileNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001 - a damaged snapshot must not keep the cloud from starting
            log.warning("endpoint state %s not restored (%s: %s); starting empty", self.path, type(exc).__name__, exc)
            return False
        if data.get("format") != FORMAT or data.get("moto") != moto.__version__:
            log.warning("endpoint state %s was written by moto %s (this is %s); starting empty", self.path,
                        data.get("moto"), moto.__version__)
            return False
        for name, accounts in data["services"].items():
            backend = _backend(name)
            backend.clear()
            backend.update(accounts)
        return True

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _backend(name: str):
    from moto.backends import get_backend

    return get_backend(name)


def _Pickler(out):
    """cloudpickle's pickler, plus private keys (moto's KMS keys hold cryptography's key objects,
    which do not pickle): written as PKCS#8 PEM, loaded back as the same kind of key."""
    import cloudpickle
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
                from cryptography.hazmat.primitives import serialization

                pem = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
                return _private_key, (pem,)
            return super().reducer_override(obj)
    return Pickler(out)


def _private_key(pem: bytes):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(pem, password=None)


def _register_reducers() -> None:
    """moto's SSM ParameterDict is a defaultdict whose constructor takes its account and region:
    rebuild it from those, its items and its attributes."""
    from moto.ssm.models import ParameterDict

    copyreg.pickle(ParameterDict, lambda d: (_parameter_dict, (d.account_id, d.region_name, dict(d), dict(d.__dict__))))


def _parameter_dict(account_id: str, region_name: str, items: dict, attributes: dict):
    from moto.ssm.models import ParameterDict

    d = ParameterDict(account_id, region_name)
    d.update(items)
    d.__dict__.update(attributes)
    return d
