"""``my_company``: native ``TrainerCallback`` classes written as the reference document teaches."""
