"""What tests/kubernetes.rs asks of Python, from its virtual environment.

    manifests.py json FILE...
        Prints, as JSON, [{"file": FILE, "objects": [OBJECT, ...]}, ...]:
        every YAML document of each file, read as kubectl reads them.

    manifests.py podmonitor SCHEMA < OBJECT.json
        Validates one PodMonitor (JSON on stdin) against SCHEMA, whose
        references to Kubernetes' own definitions (ObjectMeta,
        LabelSelector) resolve to kubernetes-validate's strict schemas of
        the newest Kubernetes it knows. Prints each error; exits 1 if any.
"""

import json
import os
import sys

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import referencing
import yaml


def load(files):
    out = []
    for name in files:
        with open(name) as f:
            objects = [o for o in yaml.safe_load_all(f) if o is not None]
        out.append({"file": name, "objects": objects})
    json.dump(out, sys.stdout)


def podmonitor(schema_file):
    with open(schema_file) as f:
        schema = json.load(f)
    version = kubernetes_validate.utils.latest_version()
    definitions_file = os.path.join(
        os.path.dirname(kubernetes_validate.__file__),
        "kubernetes-json-schema",
        "v%s-local-strict" % version,
        "_definitions.json",
    )
    with open(definitions_file) as f:
        definitions = referencing.Resource.from_contents(json.load(f))
    registry = definitions @ referencing.Registry()
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = list(validator.iter_errors(json.load(sys.stdin)))
    for e in errors:
        print("%s: %s" % (".".join(str(p) for p in e.absolute_path) or "(top)", e.message))
    return 1 if errors else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["json"]:
        load(sys.argv[2:])
    elif sys.argv[1:2] == ["podmonitor"] and len(sys.argv) == 3:
        sys.exit(podmonitor(sys.argv[2]))
    else:
        sys.exit(__doc__)
