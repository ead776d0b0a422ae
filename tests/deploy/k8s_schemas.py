"""Write tests/deploy/k8s-schemas.json: strict JSON schemas of the Kubernetes kinds that
`marsc deploy k8s` writes, derived from the official Kubernetes Python client's models
(every model's `openapi_types` and `attribute_map`, required fields from its pydantic
fields). Strict: an object has exactly the keys its model names (`additionalProperties:
false`), values have the model's types (quantities are strings, counts integers).

Run once when the client version moves, and commit the output:

    python3 -m venv /tmp/k8s && /tmp/k8s/bin/pip install kubernetes==37.0.2
    /tmp/k8s/bin/python tests/deploy/k8s_schemas.py > tests/deploy/k8s-schemas.json
"""

import json
import re
import sys
from importlib.metadata import version

import kubernetes.client.models as models

KINDS = {
    "v1/ConfigMap": "V1ConfigMap",
    "v1/Service": "V1Service",
    "apps/v1/StatefulSet": "V1StatefulSet",
    "scheduling.k8s.io/v1/PriorityClass": "V1PriorityClass",
    "autoscaling/v2/HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler",
}

PRIMITIVE = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "object": {},
    "bytearray": {"type": "string"},
    "bytes": {"type": "string"},
}

definitions = {}


def schema_of(t):
    if t in PRIMITIVE:
        return PRIMITIVE[t]
    m = re.fullmatch(r"[lL]ist\[(.+)\]", t)
    if m:
        return {"type": "array", "items": schema_of(m.group(1))}
    m = re.fullmatch(r"[dD]ict\[str, (.+)\]", t) or re.fullmatch(r"dict\(str, (.+)\)", t)
    if m:
        return {"type": "object", "additionalProperties": schema_of(m.group(1))}
    define(t)
    return {"$ref": "#/definitions/" + t}


def define(name):
    if name in definitions:
        return
    cls = getattr(models, name)
    definitions[name] = {}  # reserve: models refer to themselves (JSONSchemaProps)
    props = {}
    needed = {
        f.serialization_alias or n for n, f in cls.model_fields.items() if f.is_required()
    }
    required = []
    for attr, t in cls.openapi_types.items():
        key = cls.attribute_map[attr]
        props[key] = schema_of(t)
        if key in needed:
            required.append(key)
    definitions[name] = {
        "type": "object",
        "properties": props,
        "required": sorted(required),
        "additionalProperties": False,
    }


for cls in KINDS.values():
    define(cls)

json.dump(
    {
        "source": "kubernetes (Python client) " + version("kubernetes"),
        "kinds": KINDS,
        "definitions": dict(sorted(definitions.items())),
    },
    sys.stdout,
    indent=1,
    sort_keys=False,
)
sys.stdout.write("\n")
