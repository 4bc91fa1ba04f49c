"""A JSON schema of KubeRay's `RayCluster` (apiVersion ray.io/v1) for the fields deploy/k8s can use.

kubernetes-validate only warns on custom resources and no KubeRay CRD schema is installed here, so this
lists the v1 field names (KubeRay 1.1-1.5, `ray-operator/apis/ray/v1/raycluster_types.go`) with
`additionalProperties: false`: a misspelled key fails. Pod templates are left to kubernetes-validate
(tests/test_deploy_k8s.py wraps them as PodTemplates)."""

from __future__ import annotations

ANY_OBJECT = {"type": "object"}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}  # map[string]string
COUNT = {"type": "integer", "minimum": 0}
BOOL = {"type": "boolean"}
ARRAY = {"type": "array"}


def _object(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_AUTOSCALER_OPTIONS = _object(
    {
        "resources": ANY_OBJECT,
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "env": ARRAY,
        "envFrom": ARRAY,
        "volumeMounts": ARRAY,
        "securityContext": ANY_OBJECT,
        "idleTimeoutSeconds": COUNT,
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "version": {"enum": ["v1", "v2"]},
    }
)
_HEAD_GROUP = _object(
    {
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
        "headService": ANY_OBJECT,
        "enableIngress": BOOL,
        "rayStartParams": STRINGS,
        "template": ANY_OBJECT,
        "resources": STRINGS,
        "labels": STRINGS,
    },
    required=("rayStartParams", "template"),
)
_WORKER_GROUP = _object(
    {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": COUNT,
        "minReplicas": COUNT,
        "maxReplicas": COUNT,
        "numOfHosts": {"type": "integer", "minimum": 1},
        "idleTimeoutSeconds": COUNT,
        "suspend": BOOL,
        "rayStartParams": STRINGS,
        "template": ANY_OBJECT,
        "scaleStrategy": _object({"workersToDelete": ARRAY, "multihostReplicasToDelete": ARRAY}),
        "resources": STRINGS,
        "labels": STRINGS,
    },
    required=("groupName", "rayStartParams", "template"),
)
RAYCLUSTER = _object(
    {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": ANY_OBJECT,
        "spec": _object(
            {
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": BOOL,
                "autoscalerOptions": _AUTOSCALER_OPTIONS,
                "headServiceAnnotations": STRINGS,
                "suspend": BOOL,
                "managedBy": {"type": "string"},
                "gcsFaultToleranceOptions": ANY_OBJECT,
                "upgradeStrategy": ANY_OBJECT,
                "headGroupSpec": _HEAD_GROUP,
                "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
            },
            required=("headGroupSpec",),
        ),
    },
    required=("apiVersion", "kind", "metadata", "spec"),
)
