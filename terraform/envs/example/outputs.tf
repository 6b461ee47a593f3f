output "sciscale" {
  description = "Everything sciscale needs: bucket, runs_root, s3_endpoint_url, mlflow_url, ecr_repository_url, kubeconfig_command, ..."
  value = {
    bucket                = module.sciscale.bucket
    runs_root             = module.sciscale.runs_root
    s3_endpoint_url       = module.sciscale.s3_endpoint_url
    mlflow_url            = module.sciscale.mlflow_url
    ray_dashboard_address = module.sciscale.ray_dashboard_address
    ecr_repository_url    = module.sciscale.ecr_repository_url
    kubeconfig_command    = module.sciscale.kubeconfig_command
    ray_role_arn          = module.sciscale.ray_role_arn
    mlflow_role_arn       = module.sciscale.mlflow_role_arn
  }
}
