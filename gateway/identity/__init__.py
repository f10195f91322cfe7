"""Who a person is: passwords (here), and the second factors and passkeys beside them."""
