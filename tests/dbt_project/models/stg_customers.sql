{{ config(materialized='ephemeral') }}
select * from {{ ref('raw_customers') }}
