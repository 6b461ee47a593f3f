# What sciscale consumes (docs/deploy.md): spec fields, `sciscale render kuberay` flags, kubectl set-up.
output "s3_endpoint_url" {
  description = "S3 endpoint for specs (storage.endpoint_url / data.storage.endpoint_url); the regional AWS endpoint."
  value       = "https://s3.${var.region}.amazonaws.com"
}

output "bucket" {
  description = "The sciscale bucket: data at s3://BUCKET/datasets/..., runs_root s3://BUCKET/runs."
  value       = aws_s3_bucket.main.id
}

output "runs_root" {
  description = "Value for storage.runs_root in specs."
  value       = "s3://${aws_s3_bucket.main.id}/runs"
}

output "mlflow_url" {
  description = "MLflow tracking URI inside the cluster (tracking.uri in specs). From a laptop: kubectl -n sciscale port-forward svc/mlflow 5000:5000, then http://localhost:5000."
  value       = "http://mlflow.${local.namespace}.svc.cluster.local:5000"
}

output "ray_dashboard_address" {
  description = "How to reach a run's Ray dashboard (the head service is ClusterIP only)."
  value       = "kubectl -n ${local.namespace} port-forward svc/RAYJOB_NAME-head-svc 8265:8265  # then http://localhost:8265"
}

output "ecr_repository_url" {
  description = "Push the image from infra/container/Dockerfile here; pass IMAGE to `sciscale render kuberay --image`."
  value       = aws_ecr_repository.sciscale.repository_url
}

output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.main.name
}

output "kubeconfig_command" {
  description = "Command that points kubectl at the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${aws_eks_cluster.main.name}"
}

output "ray_role_arn" {
  description = "IAM role of the sciscale-ray service account (datasets/ read, runs/ read-write)."
  value       = aws_iam_role.irsa["ray"].arn
}

output "mlflow_role_arn" {
  description = "IAM role of the sciscale-mlflow service account (mlflow-artifacts/ read-write)."
  value       = aws_iam_role.irsa["mlflow"].arn
}

output "mlflow_db_address" {
  description = "RDS Postgres endpoint of the MLflow store (private)."
  value       = aws_db_instance.mlflow.address
}

output "kms_key_arn" {
  description = "KMS key encrypting the bucket, EKS secrets, RDS, logs, ECR and node volumes."
  value       = aws_kms_key.main.arn
}
