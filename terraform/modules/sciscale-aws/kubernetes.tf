# In-cluster pieces: operators through Helm, and the namespace, service accounts, secrets and config that
# infra/mlflow and the RayJobs of `sciscale render kuberay` expect.
resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_version
  namespace        = "kuberay-system"
  create_namespace = true
  values = [yamlencode({
    nodeSelector = { "sciscale.io/pool" = "system" }
  })]
  depends_on = [aws_eks_node_group.main]
}

# The NVIDIA AMI has the driver; the device plugin advertises nvidia.com/gpu to the scheduler.
resource "helm_release" "nvidia_device_plugin" {
  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = "0.17.1"
  namespace        = "nvidia-device-plugin"
  create_namespace = true
  values = [yamlencode({
    nodeSelector = { "sciscale.io/pool" = null }
    affinity = { nodeAffinity = { requiredDuringSchedulingIgnoredDuringExecution = { nodeSelectorTerms = [{
      matchExpressions = [{ key = "sciscale.io/pool", operator = "In", values = ["gpu-ondemand", "gpu-spot"] }]
    }] } } }
    tolerations = [
      { key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" },
      { key = "sciscale.io/spot", operator = "Exists", effect = "NoSchedule" },
    ]
  })]
  depends_on = [aws_eks_node_group.main]
}

# Adds GPU nodes when KubeRay's autoscaler creates worker pods that do not fit, removes idle ones.
resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = "9.46.6"
  namespace  = "kube-system"
  values = [yamlencode({
    autoDiscovery = { clusterName = aws_eks_cluster.main.name }
    awsRegion     = var.region
    rbac = { serviceAccount = {
      name        = "cluster-autoscaler"
      annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.irsa["cluster-autoscaler"].arn }
    } }
    nodeSelector = { "sciscale.io/pool" = "system" }
    extraArgs    = { "scale-down-unneeded-time" = "10m", "expander" = "priority,least-waste" }
    expanderPriorities = { "10" = [".*gpu-ondemand.*"], "5" = [".*gpu-spot.*"], "1" = [".*"] }
  })]
  depends_on = [aws_eks_node_group.main]
}

resource "kubernetes_namespace_v1" "sciscale" {
  metadata {
    name = local.namespace
    labels = {
      "app.kubernetes.io/name"             = "sciscale"
      "pod-security.kubernetes.io/enforce" = "baseline"
    }
  }
  depends_on = [aws_eks_node_group.main]
}

resource "kubernetes_service_account_v1" "irsa" {
  for_each = { ray = "sciscale-ray", mlflow = "sciscale-mlflow" }
  metadata {
    name        = each.value
    namespace   = kubernetes_namespace_v1.sciscale.metadata[0].name
    annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.irsa[each.key].arn }
    labels      = { "app.kubernetes.io/part-of" = "sciscale" }
  }
  automount_service_account_token = false
}

resource "random_password" "mlflow_admin" {
  length  = 24
  special = false
}

resource "random_password" "mlflow_client" {
  length  = 24
  special = false
}

locals {
  db_url = "postgresql://mlflow:${random_password.mlflow_db.result}@${aws_db_instance.mlflow.address}:5432"
}

resource "kubernetes_secret_v1" "mlflow_db" {
  metadata {
    name      = "sciscale-mlflow-db"
    namespace = kubernetes_namespace_v1.sciscale.metadata[0].name
  }
  data = { MLFLOW_BACKEND_STORE_URI = "${local.db_url}/mlflow?sslmode=require" }
}

resource "kubernetes_secret_v1" "mlflow_auth" {
  metadata {
    name      = "sciscale-mlflow-auth"
    namespace = kubernetes_namespace_v1.sciscale.metadata[0].name
  }
  data = {
    MLFLOW_AUTH_ADMIN_PASSWORD = random_password.mlflow_admin.result
    "basic_auth.ini" = join("\n", [
      "[mlflow]",
      "default_permission = READ",
      # the auth tables live beside the tracking tables (MLflow prefixes them), so one database serves both
      "database_uri = ${local.db_url}/mlflow?sslmode=require",
      "admin_username = admin",
      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
      "",
    ])
  }
}

# Credentials the Ray pods log with; create the user once (docs/deploy.md) with the admin password.
resource "kubernetes_secret_v1" "mlflow_client" {
  metadata {
    name      = "sciscale-mlflow-client"
    namespace = kubernetes_namespace_v1.sciscale.metadata[0].name
  }
  data = {
    MLFLOW_TRACKING_USERNAME = "sciscale"
    MLFLOW_TRACKING_PASSWORD = random_password.mlflow_client.result
  }
}

resource "kubernetes_config_map_v1" "mlflow" {
  metadata {
    name      = "sciscale-mlflow-config"
    namespace = kubernetes_namespace_v1.sciscale.metadata[0].name
  }
  data = {
    MLFLOW_ARTIFACTS_DESTINATION = "s3://${aws_s3_bucket.main.id}/mlflow-artifacts"
    AWS_REGION                   = var.region
  }
}
