terraform {
  required_version = ">= 1.6"
  required_providers {
    aws        = { source = "hashicorp/aws", version = ">= 5.80, < 7.0" }
    helm       = { source = "hashicorp/helm", version = ">= 2.16, < 3.0" }
    kubernetes = { source = "hashicorp/kubernetes", version = ">= 2.35, < 3.0" }
    random     = { source = "hashicorp/random", version = ">= 3.6, < 4.0" }
    tls        = { source = "hashicorp/tls", version = ">= 4.0, < 5.0" }
  }

  # State holds the database password: keep it in an encrypted, versioned bucket of its own.
  # terraform init -backend-config="bucket=..." -backend-config="key=sciscale/example.tfstate" \
  #   -backend-config="region=..." -backend-config="kms_key_id=..."
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
