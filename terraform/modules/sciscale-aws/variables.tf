variable "name" {
  description = "Prefix of every resource name (cluster, bucket, database), e.g. \"sciscale-prod\". Lowercase letters, digits and '-'."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name must be 3-31 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "region" {
  description = "AWS region of every resource, e.g. \"us-east-1\" (must offer the GPU instance types below)."
  type        = string
}

variable "availability_zones" {
  description = "Two or three availability zones of the region for the private subnets (GPU capacity differs per zone)."
  type        = list(string)
  validation {
    condition     = length(var.availability_zones) >= 2
    error_message = "EKS and RDS need at least two availability zones."
  }
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC; each zone gets a /19 private subnet and a /24 public subnet (NAT only)."
  type        = string
  default     = "10.42.0.0/16"
}

variable "kubernetes_version" {
  description = "EKS control-plane version."
  type        = string
  default     = "1.33"
}

variable "api_allowed_cidrs" {
  description = "CIDRs allowed to reach the EKS API over the internet. Empty (default): private endpoint only; run terraform and kubectl from inside the VPC (VPN, bastion, SSM)."
  type        = list(string)
  default     = []
}

variable "system_instance_types" {
  description = "Instance types of the system node group (Ray heads, MLflow, operators)."
  type        = list(string)
  default     = ["m6i.2xlarge"]
}

variable "system_nodes" {
  description = "Size of the system node group: min, desired and max node counts."
  type        = object({ min = number, desired = number, max = number })
  default     = { min = 2, desired = 2, max = 4 }
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node groups (all with the same GPU count per node), e.g. [\"p5.48xlarge\"] or [\"g6e.xlarge\", \"g6.xlarge\"]."
  type        = list(string)
  default     = ["g6e.xlarge"]
}

variable "gpu_ondemand_nodes" {
  description = "On-demand GPU nodes: min and max (the cluster autoscaler moves between them as Ray asks). Cover an elastic spec's workers.min here."
  type        = object({ min = number, max = number })
  default     = { min = 0, max = 4 }
}

variable "gpu_spot_nodes" {
  description = "Spot GPU nodes: min and max; the extra workers of an elastic spec (up to workers.max) land here."
  type        = object({ min = number, max = number })
  default     = { min = 0, max = 8 }
}

variable "node_disk_gib" {
  description = "Root volume of every node in GiB (container images and the local shard cache live here)."
  type        = number
  default     = 200
}

variable "checkpoint_noncurrent_days" {
  description = "Days an overwritten or rotated-out checkpoint object (a noncurrent version under runs/) is kept before it is deleted."
  type        = number
  default     = 14
}

variable "checkpoint_archive_days" {
  description = "Days after which objects under runs/ move to S3 Intelligent-Tiering (old checkpoints are rarely read)."
  type        = number
  default     = 30
}

variable "db_instance_class" {
  description = "RDS instance class of the MLflow Postgres database."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage_gib" {
  description = "Initial RDS storage in GiB (grows automatically up to 5x)."
  type        = number
  default     = 50
}

variable "kuberay_version" {
  description = "Version of the kuberay-operator Helm chart."
  type        = string
  default     = "1.4.2"
}

variable "log_retention_days" {
  description = "Retention of the EKS control-plane and VPC flow logs in CloudWatch (at least a year for audits)."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
