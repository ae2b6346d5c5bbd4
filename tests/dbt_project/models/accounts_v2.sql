select 1 as account_id, 'new' as plan, 'x' as region
