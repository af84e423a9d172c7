"""Structural JSON schemas for the custom resources the chart can render, which
kubernetes-validate has no schemas for (they come from CRDs, not Kubernetes itself).

Written from the CRDs' documented fields (Prometheus Operator monitoring.coreos.com/v1,
KEDA keda.sh/v1alpha1), and strict where the chart writes: an unknown or misspelt field
fails, as does a wrong type the API server would reject (e.g. a KEDA trigger's metadata
values must all be strings, a ServiceMonitor interval must be a Prometheus duration).
"""

from __future__ import annotations

DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                       r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                 "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}
RELABEL_CONFIG = {
    "type": "object",
    "properties": {
        "sourceLabels": {"type": "array", "items": LABEL_NAME},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod",
                            "HashMod", "labelmap", "LabelMap", "labeldrop", "LabelDrop",
                            "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase",
                            "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]},
    },
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


SERVICE_MONITOR = _resource("monitoring.coreos.com/v1", "ServiceMonitor", {
    "type": "object",
    "required": ["selector", "endpoints"],
    "properties": {
        "selector": LABEL_SELECTOR,
        "namespaceSelector": {
            "type": "object",
            "properties": {"any": {"type": "boolean"},
                           "matchNames": {"type": "array", "items": {"type": "string"}}},
            "additionalProperties": False,
        },
        "jobLabel": {"type": "string"},
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "port": {"type": "string"},
                    "targetPort": {"type": ["integer", "string"]},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": DURATION,
                    "scrapeTimeout": DURATION,
                    "honorLabels": {"type": "boolean"},
                    "honorTimestamps": {"type": "boolean"},
                    "authorization": {"type": "object"},
                    "bearerTokenSecret": {"type": "object"},
                    "tlsConfig": {"type": "object"},
                    "relabelings": {"type": "array", "items": RELABEL_CONFIG},
                    "metricRelabelings": {"type": "array", "items": RELABEL_CONFIG},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
})

PROMETHEUS_RULE = _resource("monitoring.coreos.com/v1", "PrometheusRule", {
    "type": "object",
    "required": ["groups"],
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": DURATION,
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "properties": {
                                "alert": {"type": "string"},
                                "record": {"type": "string"},
                                "expr": {"type": ["string", "integer"]},
                                "for": DURATION,
                                "keep_firing_for": DURATION,
                                "labels": STRING_MAP,
                                "annotations": STRING_MAP,
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
})

SCALED_OBJECT = _resource("keda.sh/v1alpha1", "ScaledObject", {
    "type": "object",
    "required": ["scaleTargetRef", "triggers"],
    "properties": {
        "scaleTargetRef": {
            "type": "object",
            "required": ["name"],
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}},
            "additionalProperties": False,
        },
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "idleReplicaCount": {"type": "integer", "minimum": 0},
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": {"type": "integer", "minimum": 0},
        "initialCooldownPeriod": {"type": "integer", "minimum": 0},
        "fallback": {"type": "object"},
        "advanced": {
            "type": "object",
            "properties": {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "horizontalPodAutoscalerConfig": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                    "additionalProperties": False,
                },
                "scalingModifiers": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "metadata"],
                "properties": {
                    "type": {"type": "string"},
                    "name": {"type": "string"},
                    "useCachedMetrics": {"type": "boolean"},
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    # map[string]string in KEDA's Go types: numbers must be quoted.
                    "metadata": STRING_MAP,
                    "authenticationRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"},
                                       "kind": {"enum": ["TriggerAuthentication",
                                                         "ClusterTriggerAuthentication"]}},
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
})

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
}
