# Example environment: one sciscale stack in one region. Copy this folder per environment.
provider "aws" {
  region = var.region
  default_tags {
    tags = { environment = var.environment, "managed-by" = "terraform" }
  }
}

module "sciscale" {
  source             = "../../modules/sciscale-aws"
  name               = "sciscale-${var.environment}"
  region             = var.region
  availability_zones = var.availability_zones
  api_allowed_cidrs  = var.api_allowed_cidrs
  gpu_instance_types = var.gpu_instance_types
  gpu_ondemand_nodes = var.gpu_ondemand_nodes
  gpu_spot_nodes     = var.gpu_spot_nodes
  tags               = var.tags
}

# The helm and kubernetes providers talk to the cluster the module creates, with a short-lived token.
data "aws_eks_cluster_auth" "main" {
  name = module.sciscale.cluster_name
}

data "aws_eks_cluster" "main" {
  name = module.sciscale.cluster_name
}

provider "kubernetes" {
  host                   = data.aws_eks_cluster.main.endpoint
  cluster_ca_certificate = base64decode(data.aws_eks_cluster.main.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.main.token
}

provider "helm" {
  kubernetes {
    host                   = data.aws_eks_cluster.main.endpoint
    cluster_ca_certificate = base64decode(data.aws_eks_cluster.main.certificate_authority[0].data)
    token                  = data.aws_eks_cluster_auth.main.token
  }
}
