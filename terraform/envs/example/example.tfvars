# terraform apply -var-file=example.tfvars
environment        = "dev"
region             = "us-east-1"
availability_zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
# empty: private API endpoint; run terraform/kubectl from inside the VPC (VPN, bastion, SSM)
api_allowed_cidrs  = [] # e.g. ["203.0.113.10/32"]: opens the API endpoint to those CIDRs only
gpu_instance_types = ["g6e.xlarge"]
gpu_ondemand_nodes = { min = 0, max = 2 }
gpu_spot_nodes     = { min = 0, max = 6 }
tags               = { owner = "ml-platform", "cost-centre" = "research" }
