{{ config(alias='dim_customers') }}
select id as customer_id, lower(email) as email, first_name, updated_at from {{ ref('stg_customers') }}
