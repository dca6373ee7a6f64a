// The public face of src/k8s: what the agent and the proxy import.
export { loadClusterConfig, loadInCluster, loadKubeconfig, KubeConfigError, SERVICE_ACCOUNT_DIR, type ClusterConfig, type LoadOptions } from "./config.ts";
export { KubeClient, KubeApiError, describeError, type ListResult, type TokenReviewResult, type WatchEvent, type WatchEventType } from "./client.ts";
export { Informer, type EventType, type InformerHandler, type InformerOptions, type InformerStats } from "./informer.ts";
export { AUTHORIZATION_POLICIES, NAMESPACES, PEER_AUTHENTICATIONS, PODS, objectKey, resourcePath, type IstioObject, type KubeObject, type Namespace, type ObjectMeta, type Pod, type ResourceType } from "./objects.ts";
